"""OTA in PostgreSQL: releases and their artifacts, campaigns, lanes, targets and device reports.

The artifacts themselves are files (`artifacts`); the SQL is in `queries`, the decisions in
`policy`, what progress reads like in `progress`. The conductor's round (`plan_round`) runs in
one transaction under an advisory lock, so several fleet-server processes can run it and only
one acts at a time.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.messages import DailySpan, OtaStatus
from firmware_protocols.ota import ReleaseManifest, Version
from fleet_server.db.batch import columns
from fleet_server.db.fetch import execute, fetch_dicts, fetch_model, fetch_models, fetch_row, fetch_rows
from fleet_server.errors import OtaError
from fleet_server.ota import queries
from fleet_server.ota.artifacts import ArtifactFiles
from fleet_server.ota.policy import (
    ENDED,
    IN_PROGRESS,
    PENDING,
    RELEASE_FAILURES,
    CampaignPolicy,
    CampaignStatus,
    LaneCounts,
    TargetSelector,
    decide,
    install_window,
    order_key,
    wave_of,
)
from fleet_server.ota.progress import CampaignProgress, progress_of

_ROUND_LOCK = 0x07A0_0001
# Failures offered again (while attempts remain): the network, the disk, a newer offer, the power.
RETRIED_FAILURES = ("download", "install", "superseded", "interrupted")


class ReleaseView(BaseModel):
    name: str
    version: str
    models: list[str]
    size: int
    sha256: str
    created_at: datetime
    uploaded_at: datetime | None


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
        self.artifacts = ArtifactFiles(artifacts_dir)

    # -- releases --------------------------------------------------------------------------

    async def add_release(self, manifest: ReleaseManifest) -> ReleaseView:
        """Record a release whose manifest the caller has checked against the release keys."""
        fields = manifest.model_dump(mode="json", exclude_none=True)
        async with self.pool.connection() as conn:
            await execute(
                conn,
                queries.INSERT_RELEASE,
                (manifest.name, manifest.version, Jsonb(fields), manifest.sha256, manifest.size, manifest.models),
            )
            row = await fetch_row(conn, queries.RELEASE_MANIFEST, (manifest.name, manifest.version))
        if row is None or row[0] != fields:
            raise OtaError(
                "RELEASE_EXISTS",
                f"{manifest.describe()} exists with another manifest; releases are immutable, use a new version",
                f"版本 {manifest.name} {manifest.version} 已存在且清单不同；发布不可修改，请使用新版本号",
            )
        return await self.release(manifest.name, manifest.version)

    async def release(self, name: str, version: str) -> ReleaseView:
        release = await fetch_model(self.pool, ReleaseView, queries.RELEASE, (name, version))
        if release is None:
            raise OtaError("RELEASE_NOT_FOUND", f"release {name} {version} not found", f"版本 {name} {version} 不存在")
        return release

    async def releases(self) -> list[ReleaseView]:
        return await fetch_models(self.pool, ReleaseView, queries.RELEASES)

    async def store_artifact(self, name: str, version: str, chunks: AsyncIterator[bytes]) -> ReleaseView:
        """Take the artifact of a release, streamed; keep it only if it is exactly what the
        manifest says (size and SHA-256)."""
        release = await self.release(name, version)
        await self.artifacts.store(chunks, size=release.size, sha256=release.sha256)
        await execute(self.pool, queries.ARTIFACT_UPLOADED, (name, version))
        return await self.release(name, version)

    def artifact_path(self, sha256: str) -> Path | None:
        return self.artifacts.path(sha256)

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
                    queries.INSERT_CAMPAIGN,
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
            await cur.execute(queries.INSERT_LANES, (campaign_id, list(lanes)))
            await cur.execute(queries.INSERT_TARGETS, columns(rows, 10))
        return await self.progress(campaign_id)

    async def _select(self, selector: TargetSelector, release: ReleaseView) -> list[dict[str, Any]]:
        """The devices the selector names (an empty list is no condition) that are not on the
        release's version or newer already."""
        params: dict[str, Any] = {
            "release_models": release.models,
            **{
                name: getattr(selector, name) or None
                for name in ("models", "versions", "cities", "districts", "stores", "tags", "devices")
            },
        }
        rows = await fetch_dicts(self.pool, queries.TARGET_CANDIDATES, params)
        target = Version(release.version)
        return [r for r in rows if not _at_least(r["firmware"], target)]

    async def campaigns(self) -> list[CampaignProgress]:
        ids = [row[0] for row in await fetch_rows(self.pool, queries.CAMPAIGN_IDS)]
        return [await self.progress(i) for i in ids]

    async def progress(self, campaign_id: str) -> CampaignProgress:
        async with self.pool.connection() as conn:
            campaigns = await fetch_dicts(conn, queries.CAMPAIGN, (campaign_id,))
            if not campaigns:
                raise _campaign_not_found(campaign_id)
            counts = await fetch_dicts(conn, queries.TARGET_COUNTS, (campaign_id,))
            lanes = await fetch_dicts(conn, queries.LANES, (campaign_id,))
            failures = {r["failure"]: r["n"] for r in await fetch_dicts(conn, queries.FAILURES, (campaign_id,))}
            recent = await fetch_row(conn, queries.RECENTLY_ENDED, (campaign_id, sorted(ENDED)))
            cut = await fetch_row(conn, queries.INTERRUPTED, (campaign_id,))
        return progress_of(campaigns[0], counts, lanes, failures, recent[0] if recent else 0, cut[0] if cut else 0)

    async def act(self, campaign_id: str, action: str) -> CampaignProgress:
        """pause | resume | abort | retry (offer again the devices that rolled back or failed)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await fetch_row(conn, queries.LOCK_CAMPAIGN, (campaign_id,))
            if row is None:
                raise _campaign_not_found(campaign_id)
            status = row[0]
            if status == CampaignStatus.ABORTED or (status == CampaignStatus.COMPLETED and action != "retry"):
                raise OtaError(
                    "CAMPAIGN_ENDED",
                    f"campaign {campaign_id} is {status}; it cannot {action}",
                    f"升级活动 {campaign_id} 已结束（{status}），无法执行 {action}",
                )
            if action == "pause":
                await _set_status(conn, campaign_id, CampaignStatus.PAUSED, "paused by an operator")
            elif action == "abort":
                await _set_status(conn, campaign_id, CampaignStatus.ABORTED, "aborted by an operator")
            elif action in ("resume", "retry"):
                if action == "retry":
                    await execute(conn, queries.RETRY_FAILED, (campaign_id,))
                await execute(conn, queries.RESUME_LANES, (campaign_id,))
                await _set_status(conn, campaign_id, CampaignStatus.RUNNING, None)
            else:
                raise OtaError("BAD_ACTION", f"unknown action {action!r}", f"未知操作 {action!r}")
        return await self.progress(campaign_id)

    # -- what devices report ---------------------------------------------------------------

    async def record_reports(self, statuses: Sequence[OtaStatus]) -> None:
        """Store device reports (one batch, one transaction); the latest per target sets its state."""
        latest: dict[tuple[str, str], OtaStatus] = {}
        for status in statuses:
            latest[(status.campaign_id, status.device_id)] = status
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                queries.INSERT_REPORTS,
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
                queries.APPLY_REPORTS,
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
        async with self.pool.connection() as conn, conn.transaction():
            lock = await fetch_row(conn, queries.ROUND_LOCK, (_ROUND_LOCK,))
            if not (lock and lock[0]):
                return None
            await execute(conn, queries.RECONCILE)
            await execute(conn, queries.TIMEOUTS, {"in_progress": sorted(IN_PROGRESS)})
            await execute(conn, queries.RETRIES, {"retried": list(RETRIED_FAILURES)})
            await self._move_lanes(conn)
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
                for r in await fetch_dicts(conn, queries.OFFER)
            ]
            await execute(conn, queries.FINISH_CAMPAIGNS)
        return offers

    async def _move_lanes(self, conn: psycopg.AsyncConnection[Any]) -> None:
        rows = await fetch_dicts(
            conn, queries.LANE_COUNTS, {"ended": sorted(ENDED), "release": sorted(RELEASE_FAILURES)}
        )
        for row in rows:
            policy = CampaignPolicy.model_validate(row["policy"])
            # LANE_COUNTS names its columns after LaneCounts' fields.
            counts = LaneCounts(**{f.name: row[f.name] for f in fields(LaneCounts)})
            decision = decide(counts, policy, row["wave"])
            if decision.action == "hold":
                continue
            if decision.action == "advance":
                await execute(conn, queries.NEXT_WAVE, (row["campaign_id"], row["model"]))
            else:
                status = CampaignStatus.PAUSED if decision.action == "pause" else CampaignStatus.COMPLETED
                await execute(
                    conn, queries.SET_LANE_STATUS, (status, decision.reason, row["campaign_id"], row["model"])
                )


async def _set_status(
    conn: psycopg.AsyncConnection[Any], campaign_id: str, status: CampaignStatus, reason: str | None
) -> None:
    await execute(conn, queries.SET_CAMPAIGN_STATUS, (status, reason, campaign_id))


def _campaign_not_found(campaign_id: str) -> OtaError:
    return OtaError("CAMPAIGN_NOT_FOUND", f"campaign {campaign_id} not found", f"升级活动 {campaign_id} 不存在")


def _at_least(firmware: str | None, target: Version) -> bool:
    try:
        return firmware is not None and Version(firmware) >= target
    except ValueError:
        return False
