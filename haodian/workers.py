"""`haodian server --parts bridge --workers N`: N processes of a stateless part on one port.

The kernel spreads HTTP connections over the workers (SO_REUSEPORT); the broker spreads the
device streams over them (shared subscriptions, `$share/<group>-bridge/...`); the database is
the one thing they share. This process only supervises: it starts the workers, starts again one
that dies (a crash loop ends the whole), and stops them all on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Sequence

import structlog

from haodian.errors import HaodianError
from simulators.netproxy import free_port

log = structlog.get_logger(__name__)

# A worker that dies within this long of starting, this many times in a row, is not restarted again.
QUICK_DEATH_S = 10.0
MAX_QUICK_DEATHS = 5
STOP_GRACE_S = 15.0


class WorkersError(HaodianError):
    """The workers cannot be started as asked."""


def worker_plan(*, parts: set[str], workers: int, port: int, env: dict[str, str]) -> tuple[int, list[dict[str, str]]]:
    """The shared port and each worker's environment; `WorkersError` saying why if it cannot be."""
    stateful = parts - {"bridge", "ingest"}
    if stateful:
        raise WorkersError(
            f"--workers runs stateless parts only (bridge, ingest); run {', '.join(sorted(stateful))} once, on its own"
        )
    missing = [name for name in ("HAODIAN_MQTT_URL", "HAODIAN_DATABASE_URL") if not env.get(name)]
    if missing:
        raise WorkersError(
            f"--workers needs a broker and a database the workers share: set {' and '.join(missing)}"
            " (the embedded ones are one per process)"
        )
    port = port or free_port()
    group = env.get("HAODIAN_MQTT_SHARE_GROUP") or "haodian"
    prefix = env.get("HAODIAN_MQTT_CLIENT_PREFIX") or "haodian"
    return port, [
        {
            **env,
            "HAODIAN_HTTP_REUSE_PORT": "true",
            "HAODIAN_MQTT_SHARE_GROUP": group,
            "HAODIAN_MQTT_CLIENT_PREFIX": f"{prefix}-w{n}",
        }
        for n in range(workers)
    ]


async def supervise(command: Sequence[str], environments: list[dict[str, str]]) -> int:
    """Run one process of `command` per environment until cancelled; `WorkersError` if one
    keeps dying."""

    async def start(n: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*command, env=environments[n])
        log.info("worker started", worker=n, pid=proc.pid)
        return proc

    procs = [await start(n) for n in range(len(environments))]
    started = [time.monotonic()] * len(procs)
    quick_deaths = [0] * len(procs)
    try:
        while True:
            waits = {asyncio.ensure_future(proc.wait()): n for n, proc in enumerate(procs)}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            for future in done:
                n = waits[future]
                code = future.result()
                quick_deaths[n] = quick_deaths[n] + 1 if time.monotonic() - started[n] < QUICK_DEATH_S else 0
                if quick_deaths[n] >= MAX_QUICK_DEATHS:
                    log.error("worker keeps dying; stopping all", worker=n, exit_code=code)
                    raise WorkersError(f"worker {n} exited {MAX_QUICK_DEATHS} times in a row (last exit code {code})")
                log.warning("worker exited; starting it again", worker=n, exit_code=code)
                await asyncio.sleep(min(2 ** quick_deaths[n] * 0.25, 5.0))
                procs[n] = await start(n)
                started[n] = time.monotonic()
    finally:
        await _stop(procs)


async def _stop(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            log.warning("worker did not stop in time; killing it", pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
