"""OTA in PostgreSQL: releases and their artifacts, campaigns, lanes, targets and device reports.

Artifacts are files named by their SHA-256 under the artifacts folder (content-addressed: the
same bytes are stored once, and the name is the ETag). The conductor's round (`plan_round`) runs
in one transaction under an advisory lock, so several fleet-server processes can run it and only
one acts at a time.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import DailySpan, OtaStatus
from firmware_protocols.ota import ReleaseManifest, Version
from fleet_server.db.batch import columns
from fleet_server.errors import OtaError
from fleet_server.ota.policy import (
    ENDED,
    IN_PROGRESS,
    OFFERED,
    PENDING,
    RELEASE_FAILURES,
    UNREACHABLE,
    CampaignPolicy,
    LaneCounts,
    TargetSelector,
    decide,
    install_window,
    order_key,
    wave_of,
)

_ROUND_LOCK = 0x07A0_0001
# Failures offered again (while attempts remain): the network, the disk, a newer offer.
RETRIED_FAILURES = ("download", "install", "superseded")


class ReleaseView(BaseModel):
    name: str
    version: str
    models: list[str]
    size: int
    sha256: str
    created_at: datetime
    uploaded_at: datetime | None


class LaneView(BaseModel):
    model: str
    wave: int  # 1-based, for people
    waves: int
    status: str
    status_reason: str | None
    targets: int
    by_state: dict[str, int]


class CampaignProgress(BaseModel):
    campaign_id: str
    release_name: str
    version: str
    status: str
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    policy: CampaignPolicy
    selector: TargetSelector
    targeted: int
    by_state: dict[str, int]
    lanes: list[LaneView]
    failures: dict[str, int]  # by failure (and reason where there is no failure code)
    committed: int
    unreachable: int
    success_rate: float | None  # committed / targeted, unreachable devices apart
    eta_s: float | None  # at the rate of the last ten minutes; None when nothing moved


@dataclass(frozen=True, slots=True)
class PlannedOffer:
    campaign_id: str
    device_id: str
    manifest: dict[str, Any]
    window: DailySpan | None
    utc_offset_min: int
    max_rate_bps: int | None
    device_timeout_s: int


class OtaStore:
    def __init__(self, pool: AsyncConnectionPool, artifacts_dir: Path) -> None:
        self.pool = pool
        self.artifacts_dir = artifacts_dir

    # -- releases --------------------------------------------------------------------------

    async def add_release(self, manifest: ReleaseManifest) -> ReleaseView:
        """Record a release whose manifest the caller has checked against the release keys."""
        fields = manifest.model_dump(mode="json", exclude_none=True)
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO ota_releases (name, version, manifest, sha256, size, models) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO NOTHING",
                (manifest.name, manifest.version, Jsonb(fields), manifest.sha256, manifest.size, manifest.models),
            )
            await cur.execute(
                "SELECT manifest FROM ota_releases WHERE name = %s AND version = %s", (manifest.name, manifest.version)
            )
            row = await cur.fetchone()
        if row is None or row["manifest"] != fields:
            raise OtaError(
                "RELEASE_EXISTS",
                f"{manifest.describe()} exists with another manifest; releases are immutable, use a new version",
                f"版本 {manifest.name} {manifest.version} 已存在且清单不同；发布不可修改，请使用新版本号",
            )
        return await self.release(manifest.name, manifest.version)

    async def release(self, name: str, version: str) -> ReleaseView:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT name, version, models, size, sha256, created_at, uploaded_at FROM ota_releases "
                "WHERE name = %s AND version = %s",
                (name, version),
            )
            row = await cur.fetchone()
        if row is None:
            raise OtaError("RELEASE_NOT_FOUND", f"release {name} {version} not found", f"版本 {name} {version} 不存在")
        return ReleaseView.model_validate(row)

    async def releases(self) -> list[ReleaseView]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT name, version, models, size, sha256, created_at, uploaded_at FROM ota_releases "
                "ORDER BY created_at DESC"
            )
            return [ReleaseView.model_validate(r) for r in await cur.fetchall()]

    async def store_artifact(self, name: str, version: str, chunks: AsyncIterator[bytes]) -> ReleaseView:
        """Take the artifact of a release, streamed; keep it only if it is exactly what the
        manifest says (size and SHA-256)."""
        release = await self.release(name, version)
        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        partial = self.artifacts_dir / f".upload-{uuid.uuid4().hex}"
        digest, size = hashlib.sha256(), 0
        try:
            with partial.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > release.size:
                        raise OtaError(
                            "ARTIFACT_MISMATCH",
                            f"artifact is larger than the manifest's {release.size} bytes",
                            f"文件大于清单中的 {release.size} 字节",
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != release.size or digest.hexdigest() != release.sha256:
                raise OtaError(
                    "ARTIFACT_MISMATCH",
                    f"artifact is {size} bytes with SHA-256 {digest.hexdigest()}; "
                    f"the manifest says {release.size} bytes, {release.sha256}",
                    f"文件与清单不符（大小 {size}，SHA-256 {digest.hexdigest()[:12]}…）",
                )
            partial.replace(self.artifacts_dir / release.sha256)
        finally:
            partial.unlink(missing_ok=True)
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE ota_releases SET uploaded_at = now() WHERE name = %s AND version = %s", (name, version)
            )
        return await self.release(name, version)

    def artifact_path(self, sha256: str) -> Path | None:
        path = self.artifacts_dir / sha256
        return path if len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256) and path.is_file() else None

    # -- campaigns -------------------------------------------------------------------------

    async def create_campaign(
        self,
        *,
        release_name: str,
        version: str,
        selector: TargetSelector,
        policy: CampaignPolicy,
        campaign_id: str | None = None,
    ) -> CampaignProgress:
        release = await self.release(release_name, version)
        if release.uploaded_at is None:
            raise OtaError(
                "ARTIFACT_MISSING",
                f"release {release_name} {version} has no artifact uploaded yet",
                f"版本 {release_name} {version} 尚未上传升级包",
            )
        campaign_id = campaign_id or f"ota-{uuid.uuid4().hex[:10]}"
        devices = await self._select(selector, release)
        if not devices:
            raise OtaError(
                "NO_TARGETS",
                "no device matches the selector (devices already on this version or newer are left out)",
                "没有符合条件的设备（已是该版本或更新版本的设备不计入）",
            )
        lanes: dict[str, list[dict[str, Any]]] = {}
        for device in devices:
            lanes.setdefault(device["model"], []).append(device)
        rows = []
        for lane in lanes.values():
            lane.sort(key=lambda d: order_key(campaign_id, d["device_id"]))
            for rank, device in enumerate(lane):
                window = install_window(policy.window, device["business_open"], device["business_close"])
                rows.append(
                    (
                        campaign_id,
                        device["device_id"],
                        version,
                        PENDING,
                        device["model"],
                        wave_of(rank, len(lane), policy.waves),
                        device["firmware"],
                        window.start if window else None,
                        window.end if window else None,
                        device["utc_offset_min"],
                    )
                )
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            try:
                await cur.execute(
                    "INSERT INTO ota_campaigns (campaign_id, release_name, version, selector, policy, status) "
                    "VALUES (%s, %s, %s, %s, %s, 'running')",
                    (
                        campaign_id,
                        release_name,
                        version,
                        Jsonb(selector.model_dump(mode="json")),
                        Jsonb(policy.model_dump(mode="json")),
                    ),
                )
            except psycopg.errors.UniqueViolation:
                raise OtaError(
                    "CAMPAIGN_EXISTS", f"campaign {campaign_id} exists", f"升级活动 {campaign_id} 已存在"
                ) from None
            await cur.execute(
                "INSERT INTO ota_lanes (campaign_id, model, status) SELECT %s, unnest(%s::text[]), 'running'",
                (campaign_id, list(lanes)),
            )
            await cur.execute(
                "INSERT INTO ota_targets (campaign_id, device_id, target_version, state, model, wave, from_version,"
                " window_start, window_end, utc_offset_min, targeted_at)"
                " SELECT *, now() FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
                " %s::int[], %s::text[], %s::text[], %s::text[], %s::int[])",
                columns(rows, 10),
            )
        return await self.progress(campaign_id)

    async def _select(self, selector: TargetSelector, release: ReleaseView) -> list[dict[str, Any]]:
        conditions = ["d.model = ANY(%(release_models)s)", "d.model IS NOT NULL"]
        params: dict[str, Any] = {"release_models": release.models}
        for name, sql in (
            ("models", "d.model = ANY(%(models)s)"),
            ("versions", "d.firmware = ANY(%(versions)s)"),
            ("cities", "di.city_id = ANY(%(cities)s)"),
            ("districts", "st.district_id = ANY(%(districts)s)"),
            ("stores", "d.store_id = ANY(%(stores)s)"),
            ("tags", "d.tags && %(tags)s::text[]"),
            ("devices", "d.device_id = ANY(%(devices)s)"),
        ):
            values = getattr(selector, name)
            if values:
                conditions.append(sql)
                params[name] = values
        query = f"""
            SELECT d.device_id, d.model, d.firmware,
                   COALESCE(m.business_open::text, '08:00') AS business_open,
                   COALESCE(m.business_close::text, '22:00') AS business_close,
                   COALESCE(m.utc_offset_min, 480) AS utc_offset_min
            FROM devices d
            LEFT JOIN stores st ON st.store_id = d.store_id
            LEFT JOIN districts di ON di.district_id = st.district_id
            LEFT JOIN bindings b ON b.device_id = d.device_id
            LEFT JOIN merchants m ON m.merchant_id = b.merchant_id
            WHERE {" AND ".join(conditions)}
        """  # noqa: S608 - the conditions are the fixed fragments above; values are parameters.
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            rows = await cur.fetchall()
        target = Version(release.version)
        return [r for r in rows if not _at_least(r["firmware"], target)]

    async def campaigns(self) -> list[CampaignProgress]:
        async with self.pool.connection() as conn:
            ids = [
                r[0]
                for r in await (
                    await conn.execute("SELECT campaign_id FROM ota_campaigns ORDER BY created_at DESC")
                ).fetchall()
            ]
        return [await self.progress(i) for i in ids]

    async def progress(self, campaign_id: str) -> CampaignProgress:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT * FROM ota_campaigns WHERE campaign_id = %s", (campaign_id,))
            campaign = await cur.fetchone()
            if campaign is None:
                raise _campaign_not_found(campaign_id)
            await cur.execute(
                "SELECT model, state, count(*) AS n FROM ota_targets WHERE campaign_id = %s GROUP BY model, state",
                (campaign_id,),
            )
            counts = await cur.fetchall()
            await cur.execute("SELECT * FROM ota_lanes WHERE campaign_id = %s ORDER BY model", (campaign_id,))
            lanes = await cur.fetchall()
            await cur.execute(
                "SELECT COALESCE(failure, 'timeout') AS failure, count(*) AS n FROM ota_targets"
                " WHERE campaign_id = %s AND state IN ('rolled_back', 'failed') GROUP BY 1",
                (campaign_id,),
            )
            failures = {r["failure"]: r["n"] for r in await cur.fetchall()}
            await cur.execute(
                "SELECT count(*) AS n FROM ota_targets WHERE campaign_id = %s AND state = ANY(%s)"
                " AND finished_at > now() - interval '10 minutes'",
                (campaign_id, list(ENDED)),
            )
            recent = (await cur.fetchone() or {"n": 0})["n"]
        policy = CampaignPolicy.model_validate(campaign["policy"])
        by_state: dict[str, int] = {}
        lane_states: dict[str, dict[str, int]] = {}
        for row in counts:
            by_state[row["state"]] = by_state.get(row["state"], 0) + row["n"]
            lane_states.setdefault(row["model"], {})[row["state"]] = row["n"]
        total = sum(by_state.values())
        unreachable = by_state.get(UNREACHABLE, 0)
        committed = by_state.get("committed", 0)
        moving = sum(n for s, n in by_state.items() if s not in ENDED)
        active_lanes = {lane["model"] for lane in lanes if lane["status"] == "running"}
        remaining = sum(
            n
            for model, states in lane_states.items()
            if model in active_lanes
            for s, n in states.items()
            if s not in ENDED
        )
        return CampaignProgress(
            campaign_id=campaign_id,
            release_name=campaign["release_name"],
            version=campaign["version"],
            status=campaign["status"],
            status_reason=campaign["status_reason"],
            created_at=campaign["created_at"],
            updated_at=campaign["updated_at"],
            policy=policy,
            selector=TargetSelector.model_validate(campaign["selector"]),
            targeted=total,
            by_state=by_state,
            lanes=[
                LaneView(
                    model=lane["model"],
                    wave=lane["wave"] + 1,
                    waves=len(policy.waves),
                    status=lane["status"],
                    status_reason=lane["status_reason"],
                    targets=sum(lane_states.get(lane["model"], {}).values()),
                    by_state=lane_states.get(lane["model"], {}),
                )
                for lane in lanes
            ],
            failures=failures,
            committed=committed,
            unreachable=unreachable,
            success_rate=committed / (total - unreachable) if total > unreachable else None,
            eta_s=(remaining or moving) / (recent / 600) if recent and campaign["status"] == "running" else None,
        )

    async def act(self, campaign_id: str, action: str) -> CampaignProgress:
        """pause | resume | abort | retry (offer again the devices that rolled back or failed)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT status FROM ota_campaigns WHERE campaign_id = %s FOR UPDATE", (campaign_id,)
            )
            row = await cur.fetchone()
            if row is None:
                raise _campaign_not_found(campaign_id)
            status = row[0]
            if status == "aborted" or (status == "completed" and action != "retry"):
                raise OtaError(
                    "CAMPAIGN_ENDED",
                    f"campaign {campaign_id} is {status}; it cannot {action}",
                    f"升级活动 {campaign_id} 已结束（{status}），无法执行 {action}",
                )
            if action == "pause":
                await self._set_status(conn, campaign_id, "paused", "paused by an operator")
            elif action == "abort":
                await self._set_status(conn, campaign_id, "aborted", "aborted by an operator")
            elif action in ("resume", "retry"):
                if action == "retry":
                    await conn.execute(
                        "UPDATE ota_targets SET state = %s, attempts = 0, failure = NULL, reason = NULL,"
                        " updated_at = now() WHERE campaign_id = %s AND state IN ('rolled_back', 'failed')",
                        (PENDING, campaign_id),
                    )
                await conn.execute(
                    "UPDATE ota_lanes SET status = 'running', status_reason = NULL, updated_at = now()"
                    " WHERE campaign_id = %s",
                    (campaign_id,),
                )
                await self._set_status(conn, campaign_id, "running", None)
            else:
                raise OtaError("BAD_ACTION", f"unknown action {action!r}", f"未知操作 {action!r}")
        return await self.progress(campaign_id)

    @staticmethod
    async def _set_status(
        conn: psycopg.AsyncConnection[Any], campaign_id: str, status: str, reason: str | None
    ) -> None:
        await conn.execute(
            "UPDATE ota_campaigns SET status = %s, status_reason = %s, updated_at = now() WHERE campaign_id = %s",
            (status, reason, campaign_id),
        )

    # -- what devices report ---------------------------------------------------------------

    async def record_reports(self, statuses: Sequence[OtaStatus]) -> None:
        """Store device reports (one batch, one transaction); the latest per target sets its state."""
        latest: dict[tuple[str, str], OtaStatus] = {}
        for status in statuses:
            latest[(status.campaign_id, status.device_id)] = status
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO ota_reports (campaign_id, device_id, ts, state, running, attempt, failure, reason)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[], %s::text[],"
                " %s::int[], %s::text[], %s::text[])",
                columns(
                    (
                        (
                            s.campaign_id,
                            s.device_id,
                            datetime.fromtimestamp(s.ts / 1000, tz=UTC),
                            s.state.value,
                            s.running,
                            s.attempt,
                            s.failure.value if s.failure else None,
                            s.reason,
                        )
                        for s in statuses
                    ),
                    8,
                ),
            )
            await cur.execute(
                _APPLY_REPORTS,
                columns(
                    (
                        (
                            s.campaign_id,
                            s.device_id,
                            s.state.value,
                            s.bytes_done,
                            s.failure.value if s.failure else None,
                            s.reason,
                            s.running,
                        )
                        for s in latest.values()
                    ),
                    7,
                ),
            )

    # -- the conductor's round -------------------------------------------------------------

    async def plan_round(self) -> list[PlannedOffer] | None:
        """Reconcile, time out, retry, move lanes through their waves; return the offers to send
        (their targets are marked offered). None: another process holds the round."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT pg_try_advisory_xact_lock(%s) AS mine", (_ROUND_LOCK,))
            if not (await cur.fetchone() or {}).get("mine"):
                return None
            await cur.execute(_RECONCILE)
            await cur.execute(_TIMEOUTS, {"in_progress": list(IN_PROGRESS)})
            await cur.execute(_RETRIES, {"retried": list(RETRIED_FAILURES)})
            await self._move_lanes(cur)
            await cur.execute(_OFFER, {"pending": PENDING, "offered": OFFERED})
            offers = [
                PlannedOffer(
                    campaign_id=r["campaign_id"],
                    device_id=r["device_id"],
                    manifest=r["manifest"],
                    window=DailySpan(start=r["window_start"], end=r["window_end"]) if r["window_start"] else None,
                    utc_offset_min=r["utc_offset_min"],
                    max_rate_bps=r["policy"].get("max_rate_bps"),
                    device_timeout_s=int(r["policy"]["device_timeout_s"]),
                )
                for r in await cur.fetchall()
            ]
            await cur.execute(_FINISH_CAMPAIGNS)
        return offers

    async def _move_lanes(self, cur: psycopg.AsyncCursor[dict[str, Any]]) -> None:
        await cur.execute(
            _LANE_COUNTS,
            {"ended": list(ENDED), "release": list(RELEASE_FAILURES)},
        )
        for row in await cur.fetchall():
            policy = CampaignPolicy.model_validate(row["policy"])
            counts = LaneCounts(
                wave_targets=row["wave_targets"],
                wave_ended=row["wave_ended"],
                wave_committed=row["wave_committed"],
                wave_failed=row["wave_failed"],
                ended=row["ended"],
                release_failures=row["release_failures"],
                lane_targets=row["lane_targets"],
            )
            decision = decide(counts, policy, row["wave"])
            if decision.action == "hold":
                continue
            if decision.action == "advance":
                await cur.execute(
                    "UPDATE ota_lanes SET wave = wave + 1, updated_at = now() WHERE campaign_id = %s AND model = %s",
                    (row["campaign_id"], row["model"]),
                )
            else:
                status = "paused" if decision.action == "pause" else "completed"
                await cur.execute(
                    "UPDATE ota_lanes SET status = %s, status_reason = %s, updated_at = now()"
                    " WHERE campaign_id = %s AND model = %s",
                    (status, decision.reason, row["campaign_id"], row["model"]),
                )


def _campaign_not_found(campaign_id: str) -> OtaError:
    return OtaError("CAMPAIGN_NOT_FOUND", f"campaign {campaign_id} not found", f"升级活动 {campaign_id} 不存在")


def _at_least(firmware: str | None, target: Version) -> bool:
    try:
        return firmware is not None and Version(firmware) >= target
    except ValueError:
        return False


_APPLY_REPORTS = """
UPDATE ota_targets t SET state = r.state, bytes_done = r.bytes_done, failure = r.failure, reason = r.reason,
    from_version = COALESCE(t.from_version, r.running), updated_at = now(),
    finished_at = CASE WHEN r.state IN ('committed', 'rolled_back', 'failed') THEN now() END
FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[])
    AS r(campaign_id, device_id, state, bytes_done, failure, reason, running),
    ota_campaigns c
WHERE t.campaign_id = r.campaign_id AND t.device_id = r.device_id AND c.campaign_id = t.campaign_id
  AND c.status IN ('running', 'paused')
  AND t.state <> 'pending' AND NOT (t.state = 'committed' AND r.state <> 'committed')
"""

# The version a device says it runs in its hello is the truth where its reports are missing: a
# target whose device runs the new version is committed, and a committed one whose device came
# back on another version (it rolled back later) is rolled back, so it can be offered again.
_RECONCILE = """
WITH done AS (
    UPDATE ota_targets t SET state = 'committed', failure = NULL, reason = NULL, finished_at = now(),
        updated_at = now()
    FROM devices d, ota_campaigns c
    WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status IN ('running', 'paused')
      AND t.state <> 'committed' AND d.firmware = t.target_version
      -- Only where the device's own reports are missing: none yet, or none within the timeout.
      -- A device that is reporting is followed by its reports, not its hello: a trial boot says
      -- hello with the new version before its health check decides, and its reports may be
      -- stored a moment after its hello.
      AND (t.state IN ('pending', 'offered', 'unreachable')
           OR t.updated_at < now() - make_interval(secs => (c.policy->>'device_timeout_s')::int))
    RETURNING 1
)
UPDATE ota_targets t SET state = 'rolled_back', failure = 'boot', reason = 'hello reports ' || d.firmware,
    finished_at = now(), updated_at = now()
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status IN ('running', 'paused')
  AND t.state = 'committed' AND d.firmware IS DISTINCT FROM t.target_version AND d.hello_at > t.finished_at
"""

# A target with no news for the campaign's device timeout: unreachable if its device is
# offline, offered again while attempts remain, failed after that. An unreachable device that
# said hello again is offered again.
_TIMEOUTS = """
UPDATE ota_targets t SET
    state = CASE WHEN NOT d.online THEN 'unreachable'
                 WHEN t.attempts < (c.policy->>'max_attempts')::int THEN 'pending'
                 ELSE 'failed' END,
    failure = CASE WHEN d.online AND t.attempts >= (c.policy->>'max_attempts')::int THEN NULL ELSE t.failure END,
    reason = CASE WHEN NOT d.online THEN 'offline' ELSE 'no report within the device timeout' END,
    finished_at = CASE WHEN NOT d.online OR t.attempts >= (c.policy->>'max_attempts')::int THEN now() END,
    updated_at = now()
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status IN ('running', 'paused')
  AND t.state = ANY(%(in_progress)s)
  AND t.updated_at < now() - make_interval(secs => (c.policy->>'device_timeout_s')::int)
"""

_RETRIES = """
UPDATE ota_targets t SET state = 'pending', updated_at = now(), finished_at = NULL,
    attempts = CASE WHEN t.state = 'unreachable' THEN GREATEST(t.attempts - 1, 0) ELSE t.attempts END
FROM devices d, ota_campaigns c
WHERE d.device_id = t.device_id AND c.campaign_id = t.campaign_id AND c.status IN ('running', 'paused')
  AND ((t.state = 'failed' AND t.failure = ANY(%(retried)s) AND t.attempts < (c.policy->>'max_attempts')::int)
       OR (t.state = 'unreachable' AND d.online AND d.hello_at > t.updated_at))
"""

_LANE_COUNTS = """
SELECT l.campaign_id, l.model, l.wave, c.policy,
    count(*) FILTER (WHERE t.wave <= l.wave) AS wave_targets,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state = ANY(%(ended)s)) AS wave_ended,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state = 'committed') AS wave_committed,
    count(*) FILTER (WHERE t.wave <= l.wave AND t.state IN ('rolled_back', 'failed')) AS wave_failed,
    count(*) FILTER (WHERE t.state IN ('committed', 'rolled_back', 'failed')) AS ended,
    count(*) FILTER (WHERE t.state IN ('rolled_back', 'failed') AND t.failure = ANY(%(release)s)) AS release_failures,
    count(*) AS lane_targets
FROM ota_lanes l
JOIN ota_campaigns c ON c.campaign_id = l.campaign_id
JOIN ota_targets t ON t.campaign_id = l.campaign_id AND t.model = l.model
WHERE c.status = 'running' AND l.status = 'running'
GROUP BY l.campaign_id, l.model, l.wave, c.policy
"""

_OFFER = """
UPDATE ota_targets t SET state = %(offered)s, attempts = t.attempts + 1, offered_at = now(), updated_at = now(),
    failure = NULL, reason = NULL
FROM ota_lanes l, ota_campaigns c, ota_releases r
WHERE l.campaign_id = t.campaign_id AND l.model = t.model AND c.campaign_id = t.campaign_id
  AND r.name = c.release_name AND r.version = c.version
  AND c.status = 'running' AND l.status = 'running' AND t.state = %(pending)s AND t.wave <= l.wave
RETURNING t.campaign_id, t.device_id, r.manifest, t.window_start, t.window_end, t.utc_offset_min, c.policy
"""

_FINISH_CAMPAIGNS = """
UPDATE ota_campaigns c SET
    status = CASE WHEN s.paused = 0 THEN 'completed' ELSE 'paused' END,
    status_reason = CASE WHEN s.paused = 0 THEN NULL ELSE s.reasons END,
    updated_at = now()
FROM (
    SELECT l.campaign_id,
        count(*) FILTER (WHERE l.status = 'paused') AS paused,
        count(*) FILTER (WHERE l.status = 'running') AS running,
        string_agg(l.model || ': ' || l.status_reason, '; ') FILTER (WHERE l.status = 'paused') AS reasons
    FROM ota_lanes l GROUP BY l.campaign_id
) s
WHERE c.campaign_id = s.campaign_id AND c.status = 'running' AND s.running = 0
  AND NOT EXISTS (SELECT 1 FROM ota_targets t WHERE t.campaign_id = c.campaign_id
                  AND t.state NOT IN ('committed', 'rolled_back', 'failed', 'unreachable', 'pending'))
"""
