"""A simulated 30-day history of 10,000 devices gives back the parameters it was made with.

With MTBF 8,000 h over 7.2 million device-hours there are about 900 failures: the relative
standard error of an estimate from n events is about 1/sqrt(n), 3.3 % here, and the log-normal
repair times (sigma 0.8) add spread to MTTR, about 0.9/sqrt(n) = 3 %. The tolerance is 12 %,
over 3.5 standard errors, so a correct engine passes with near certainty and a wrong definition
(off by a factor, or counting the wrong states) fails.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.figures.figures import FleetFigures
from simulators.history import FleetHistory, HistoryParameters

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

TOLERANCE = 0.12


async def test_thirty_days_of_ten_thousand_devices_give_back_mtbf_mttr_availability_power_on(machine_database):
    parameters = HistoryParameters(devices=10_000, days=30, mtbf_h=8_000, mttr_min=15, seed=7)
    china = timezone(timedelta(hours=8))
    history = FleetHistory.generate(parameters, datetime(2026, 10, 1, tzinfo=china))
    async with open_pool(machine_database) as pool:
        await migrate(pool)
        await history.load(pool)
        [f] = await FleetFigures(pool).compute(history.start, history.end)
    assert f.devices == 10_000
    assert f.deployed_hours == pytest.approx(10_000 * 30 * 24)
    assert f.failures > 500
    assert f.mtbf_h == pytest.approx(parameters.mtbf_h, rel=TOLERANCE)
    assert f.mttr_min == pytest.approx(parameters.mttr_min, rel=TOLERANCE)
    # Every failure but those still under repair at the end was repaired.
    assert f.failures - 5 <= f.repairs <= f.failures
    unavailability = 1 - parameters.expected_availability()
    assert 1 - f.availability_calendar == pytest.approx(unavailability, rel=TOLERANCE)
    assert f.power_on_rate == pytest.approx(parameters.power_on, abs=0.002)
    # Down for a fault means under repair or faulty; offline is down but not a failure.
    fault_share = f.fault_rate_downtime
    assert fault_share == pytest.approx((parameters.mttr_min / 60) / parameters.mtbf_h, rel=TOLERANCE)
