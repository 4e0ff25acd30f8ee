"""`api`: the fleet API under a steady request rate, as operations' tools and pages load it.

The fleet server (`haodian server --parts fleet`, one process) on a database holding `devices`
devices with a day of simulated history (simulators.history). The load: one request every
1/`rate` s over keep-alive connections, with an ops-viewer's token: 95 % device lookups
(`GET /api/v1/devices/{id}`, a random device each) and 5 % fleet summaries
(`GET /api/v1/fleet/summary`, the dashboard's default 24-hour window). Figures per kind:
answers per second and the answer time from when each request was due (queueing in the sender
counts), p50/p95/p99/max. The ceiling on the same run: `GET /healthz` (no database, no auth)
at the same rate through the same connections: the HTTP stack's own cost on this machine.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from bench.env import BrokerKind, DatabaseKind, broker, database
from bench.http import Offered, Request, offer, wait_http
from bench.stats import fmt, percentiles, process_tree_cpu_s
from fleet_server.auth.roles import Role
from fleet_server.auth.store import AuthStore
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from simulators.history import FleetHistory, HistoryParameters
from simulators.netproxy import free_port

CONNECTIONS = 64
SUMMARY_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class ApiFigures:
    broker: str
    database: str
    devices: int
    offered_per_s: float
    duration_s: float
    sent: int
    answered: int
    errors: int
    statuses: dict[int, int]
    achieved_per_s: float
    lookup_ms: dict[str, float | None]
    summary_ms: dict[str, float | None]
    server_cpu_us_per_request: float
    ceiling_healthz_ms: dict[str, float | None]
    ceiling_achieved_per_s: float

    def lines(self) -> list[str]:
        return [
            f"broker: {self.broker}",
            f"database: {self.database}",
            f"devices {self.devices:,}; offered {self.offered_per_s:,.0f} requests/s for {self.duration_s:.0f} s"
            f" ({1 - SUMMARY_SHARE:.0%} device lookups, {SUMMARY_SHARE:.0%} fleet summaries)",
            f"requests {self.sent:,}, answered {self.answered:,}, errors {self.errors:,}, statuses {self.statuses};"
            f" achieved {self.achieved_per_s:,.0f}/s",
            f"device lookup (ms): {fmt(self.lookup_ms)}",
            f"fleet summary (ms): {fmt(self.summary_ms)}",
            f"server CPU: {self.server_cpu_us_per_request:,.0f} us per request",
            f"ceiling, GET /healthz at the same rate (ms): {fmt(self.ceiling_healthz_ms)};"
            f" achieved {self.ceiling_achieved_per_s:,.0f}/s",
        ]


async def measure_api(
    *,
    rate: float,
    duration_s: float,
    devices: int = 10_000,
    broker_kind: BrokerKind = "private",
    database_kind: DatabaseKind = "machine",
) -> ApiFigures:
    china = timezone(timedelta(hours=8))
    today = datetime.now(tz=china).replace(hour=0, minute=0, second=0, microsecond=0)
    history = FleetHistory.generate(
        HistoryParameters(devices=devices, days=1, seed=5), (today - timedelta(days=1)).astimezone(UTC)
    )
    ids = sorted({t.device_id for t in history.transitions})
    async with broker(broker_kind) as mqtt, database(database_kind) as db:
        async with open_pool(db.url, max_size=2) as pool:
            await migrate(pool)
            print(f"loading {len(ids):,} devices with a day of history", flush=True)
            await history.load(pool)
            async with pool.connection() as conn:
                await conn.execute("ANALYZE")
            token = await AuthStore(pool).service_token("bench-ops", Role.OPS_VIEWER)
        with tempfile.TemporaryDirectory(prefix="haodian-bench-api-") as folder:
            port = free_port()
            env = {
                **os.environ,
                "HAODIAN_MQTT_URL": mqtt.url,
                "HAODIAN_DATABASE_URL": db.url,
                "HAODIAN_DATA_DIR": folder,
                "HAODIAN_MQTT_CLIENT_PREFIX": "bench-api",
            }
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "haodian", "--log-level", "WARNING", "server", "--parts", "fleet",
                "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL,
                stderr=(Path(folder) / "server.log").open("wb"),
            )  # fmt: skip
            try:
                await wait_http(port)
                return await _load(port, server.pid, ids, token, rate, duration_s, mqtt.description, db.description)
            finally:
                server.terminate()
                await server.wait()


async def _load(
    port: int, pid: int, ids: list[str], token: str, rate: float, duration_s: float, mqtt: str, db: str
) -> ApiFigures:
    rng = random.Random(9)  # noqa: S311 - which device to look up, not security
    auth = {"authorization": f"Bearer {token}"}
    total = int(rate * duration_s)
    requests: list[tuple[str, Request]] = [
        ("summary", ("GET", "/api/v1/fleet/summary", b"", auth))
        if rng.random() < SUMMARY_SHARE
        else ("lookup", ("GET", f"/api/v1/devices/{rng.choice(ids)}", b"", auth))
        for _ in range(total)
    ]
    # Warm up (connections, the first summary) for a second, not counted.
    await offer(port, CONNECTIONS, requests[: int(rate)], rate)
    print(f"ceiling: GET /healthz at {rate:,.0f}/s for {min(duration_s, 10):.0f} s", flush=True)
    ceiling = await offer(
        port, CONNECTIONS, [("healthz", ("GET", "/healthz", b"", {}))] * int(rate * min(duration_s, 10)), rate
    )
    print(f"offering {total:,} requests at {rate:,.0f}/s", flush=True)
    cpu_before = process_tree_cpu_s(pid)
    result = await offer(port, CONNECTIONS, requests, rate)
    cpu_s = process_tree_cpu_s(pid) - cpu_before
    answered = sum(len(v) for v in result.answers_ms.values())
    return ApiFigures(
        broker=mqtt,
        database=db,
        devices=len(ids),
        offered_per_s=rate,
        duration_s=duration_s,
        sent=total,
        answered=answered,
        errors=result.errors + sum(n for status, n in result.statuses.items() if status >= 300),
        statuses=dict(result.statuses),
        achieved_per_s=answered / result.seconds,
        lookup_ms=percentiles(result.answers_ms.get("lookup", [])),
        summary_ms=percentiles(result.answers_ms.get("summary", [])),
        server_cpu_us_per_request=cpu_s / max(answered, 1) * 1e6,
        ceiling_healthz_ms=percentiles(ceiling.answers_ms.get("healthz", [])),
        ceiling_achieved_per_s=_achieved(ceiling),
    )


def _achieved(offered: Offered) -> float:
    return sum(len(v) for v in offered.answers_ms.values()) / offered.seconds if offered.seconds else 0.0
