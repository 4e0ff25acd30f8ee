"""A fleet's history made up from known reliability parameters, for checking the figures.

Each device runs a renewal process in time: while up it fails at rate 1/MTBF per operating hour
and drops off the network at `offline_per_day`; a repair takes a log-normal time with mean MTTR
(a long right tail, as field repairs have); a network drop lasts an exponential time. Every
step is an observation fed through the real state machine (`tracker.fold`), the same signals
ingest and the field agents produce, so the stored history is what a live fleet would store.
Each day the device is seen (sends anything) with probability `power_on`.

    history = FleetHistory.generate(HistoryParameters(devices=10_000, days=30), start)
    await history.load(pool)       # COPY into device_states and device_daily
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from psycopg_pool import AsyncConnectionPool

from fleet_server.devices.states import Signal
from fleet_server.devices.tracker import CLEAN_REPORTS_TO_VERIFY, DeviceCursor, Observation, Transition, fold

# Spread of the log-normal repair time: the slowest repairs take several times the mean.
REPAIR_SIGMA = 0.8


@dataclass(frozen=True, slots=True)
class HistoryParameters:
    devices: int = 10_000
    days: int = 30
    mtbf_h: float = 8_000.0
    mttr_min: float = 15.0
    offline_per_day: float = 0.2
    offline_mean_min: float = 10.0
    power_on: float = 0.99
    seed: int = 1
    prefix: str = "H"
    # The fleet's local day (China Standard Time): start the history at a local midnight so
    # that its days are whole local days.
    utc_offset_min: int = 480

    def expected_availability(self) -> float:
        """Long-run share of time up: 1 / (1 + fault rate x MTTR + drop rate x drop length)."""
        fault_down = (1 / self.mtbf_h) * (self.mttr_min / 60)
        drop_down = (self.offline_per_day / 24) * (self.offline_mean_min / 60)
        return 1 / (1 + fault_down + drop_down)


@dataclass(slots=True)
class FleetHistory:
    parameters: HistoryParameters
    start: datetime
    transitions: list[Transition] = field(default_factory=list)
    seen_days: list[tuple[str, date]] = field(default_factory=list)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.parameters.days)

    @classmethod
    def generate(cls, parameters: HistoryParameters, start: datetime) -> FleetHistory:
        history = cls(parameters, start)
        rng = random.Random(parameters.seed)  # noqa: S311 - simulation, not security.
        for n in range(1, parameters.devices + 1):
            device_id = f"{parameters.prefix}{n:06d}"
            cursor = DeviceCursor(None, 0)
            history.transitions.extend(
                fold(cursor, list(_observations(device_id, parameters, start, history.end, rng)))
            )
            for day in range(parameters.days):
                if rng.random() < parameters.power_on:
                    local = start + timedelta(days=day, minutes=parameters.utc_offset_min)
                    history.seen_days.append((device_id, local.date()))
        return history

    async def load(self, pool: AsyncConnectionPool) -> None:
        """Store the devices, their transitions and daily rollup rows (COPY)."""
        devices = sorted({t.device_id for t in self.transitions})
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            async with cur.copy("COPY devices (device_id, model, firmware, first_seen) FROM STDIN") as copy:
                for device_id in devices:
                    await copy.write_row((device_id, "HD-S1", "1.0.0", self.start))
            async with cur.copy("COPY device_states (device_id, at, state, previous, cause) FROM STDIN") as copy:
                for t in self.transitions:
                    await copy.write_row(
                        (t.device_id, t.at, t.state.value, t.previous.value if t.previous else None, t.cause)
                    )
            async with cur.copy(
                "COPY device_daily (device_id, day, messages, health_reports, fault_events, audio_failures,"
                " reconnects, first_at, last_at) FROM STDIN"
            ) as copy:
                for device_id, day in self.seen_days:
                    noon_china = datetime(day.year, day.month, day.day, 4, tzinfo=UTC)  # 12:00 at UTC+8
                    await copy.write_row((device_id, day, 1440, 1440, 0, 0, 1, noon_china, noon_china))


def _observations(
    device_id: str, p: HistoryParameters, start: datetime, end: datetime, rng: random.Random
) -> Iterator[Observation]:
    fault_rate = 1 / (p.mtbf_h * 3600)
    drop_rate = p.offline_per_day / 86400
    mu = math.log(p.mttr_min * 60) - REPAIR_SIGMA**2 / 2  # log-normal with the given mean
    t = start
    yield Observation(device_id, t, Signal.SEEN, "first_seen")
    while True:
        t += timedelta(seconds=rng.expovariate(fault_rate + drop_rate))
        if t >= end:
            return
        if rng.random() < fault_rate / (fault_rate + drop_rate):
            repair_s = rng.lognormvariate(mu, REPAIR_SIGMA)
            yield Observation(device_id, t, Signal.FAULT, "fault_audio")
            yield Observation(device_id, t + timedelta(seconds=repair_s * 0.3), Signal.REPAIR_STARTED, "task_started")
            # Verified healthy by consecutive clean reports, the last one ending the repair.
            for k in range(CLEAN_REPORTS_TO_VERIFY, 0, -1):
                yield Observation(
                    device_id, t + timedelta(seconds=repair_s * (1 - 0.01 * (k - 1))), Signal.HEALTHY, "health_clean"
                )
            t += timedelta(seconds=repair_s)
        else:
            yield Observation(device_id, t, Signal.PRESENCE_OFFLINE, "presence_lost")
            t += timedelta(seconds=rng.expovariate(1 / (p.offline_mean_min * 60)))
            yield Observation(device_id, t, Signal.SEEN, "presence_online")
