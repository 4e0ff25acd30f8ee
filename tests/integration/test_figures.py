"""Reliability figures against a hand-computed fixture, on a real PostgreSQL.

The window is 2026-11-01 00:00Z .. 2026-11-02 00:00Z (24 h). Merchants keep 08:00-22:00 local
(UTC+8), i.e. 00:00-14:00Z, except MA which keeps 10:00-12:00 local (02:00-04:00Z).

    device  merchant  store  history (UTC)                                            deployed up    failure good
    A       MA        S1     in_service Oct 31 12:00; faulty 06:00; under_repair 06:10;  24     23.5  0.5     23.5
                             in_service 06:30 (repair 30 min)
    B       MA        S1     in_service 12:00 (first seen inside the window)             12     12    0       12
    C       MC        S1     in_service Oct 31; offline 20:00; suspected_lost 23:00       24     20    0       23
    D       MD        S2     faulty Oct 31 23:00; in_service 01:00 (repair 120 min,       24     23    1       23
                             ends inside the window, began before it)
    E       -         S2     in_service Oct 31; retired 18:00                             18     18    0       18
                                                                                  total 102    96.5  1.5     99.5

Business hours: A 2/2 (its fault is outside MA's hours), B 0/0 (first seen after them), C 14/14,
D 13/14, E 14/14: 43/44.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.errors import FiguresError
from fleet_server.figures.figures import FleetFigures, Level, rating, state_counts

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=1)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 10 if day == 31 else 11, day, hour, minute, tzinfo=UTC)


HISTORY = {
    "A": [
        (at(31, 12), "in_service"),
        (at(1, 6), "faulty"),
        (at(1, 6, 10), "under_repair"),
        (at(1, 6, 30), "in_service"),
    ],
    "B": [(at(1, 12), "in_service")],
    "C": [(at(31, 1), "in_service"), (at(1, 20), "offline"), (at(1, 23), "suspected_lost")],
    "D": [(at(31, 2), "in_service"), (at(31, 23), "faulty"), (at(1, 1), "in_service")],
    "E": [(at(31, 3), "in_service"), (at(1, 18), "retired")],
}


def load_fixture(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO cities VALUES ('C1', '北京')")
        conn.execute("INSERT INTO districts VALUES ('D1', 'C1', '望京'), ('D2', 'C1', '回龙观')")
        conn.execute("INSERT INTO field_agents VALUES ('AG1', '王经纪', NULL)")
        conn.execute("INSERT INTO stores VALUES ('S1', 'D1', '望京店', 'AG1'), ('S2', 'D2', '回龙观店', 'AG1')")
        conn.execute(
            "INSERT INTO merchants (merchant_id, store_id, name, business_open, business_close) VALUES"
            " ('MA', 'S1', '面馆', '10:00', '12:00'), ('MC', 'S1', '小卖部', '08:00', '22:00'),"
            " ('MD', 'S2', '理发店', '08:00', '22:00'), ('MX', 'S2', '没有音箱', '08:00', '22:00')"
        )
        for device, model in (("A", "HD-S1"), ("B", "HD-S1"), ("C", "HD-P1"), ("D", "HD-S1"), ("E", "HD-P1")):
            conn.execute(
                "INSERT INTO devices (device_id, model, firmware, store_id) VALUES (%s, %s, '1.0.0', %s)",
                (device, model, "S2" if device == "E" else None),
            )
        conn.execute(
            "INSERT INTO bindings (device_id, merchant_id) VALUES ('A','MA'), ('B','MA'), ('C','MC'), ('D','MD')"
        )
        for device, history in HISTORY.items():
            previous = None
            for when, state in history:
                conn.execute(
                    "INSERT INTO device_states (device_id, at, state, previous, cause)"
                    " VALUES (%s, %s, %s, %s, 'fixture')",
                    (device, when, state, previous),
                )
                previous = state
        # Seen: A on local Nov 1 and 2 (and Oct 31, outside), B and C on Nov 1, E on Nov 2; D never.
        for device, day in (("A", 31), ("A", 1), ("A", 2), ("B", 1), ("C", 1), ("E", 2)):
            when = datetime(2026, 10 if day == 31 else 11, day, 4, tzinfo=UTC)
            conn.execute(
                "INSERT INTO device_daily VALUES (%s, %s, 1, 1, 0, 0, 0, -80, %s, %s)",
                (device, when.date(), when, when),
            )
        payments = [
            ("P1", "MA", at(1, 9), [("A", "played"), ("B", "missed")]),
            ("P2", "MC", at(1, 9), [("C", "silenced")]),
            ("P3", "MX", at(1, 9), []),  # no device: never announced
            ("P4", "MC", at(1, 23, 59), [("C", "pending")]),  # in flight: not settled
            ("P5", "MA", at(31, 9), [("A", "missed")]),  # before the window
        ]
        for payment_id, merchant, when, deliveries in payments:
            conn.execute(
                "INSERT INTO payments VALUES (%s, 'backend', %s, %s, 100, 'alipay', 'payment', 'success', %s, %s, %s)",
                (payment_id, payment_id, merchant, when, when, json.dumps({})),
            )
            for device, status in deliveries:
                conn.execute(
                    "INSERT INTO deliveries (payment_id, device_id, status, expires_at, last_published_at,"
                    " play_started_at) VALUES (%s, %s, %s, %s, %s, %s)",
                    (payment_id, device, status, when, when, when + timedelta(milliseconds=40)),
                )
        conn.execute(
            "INSERT INTO ota_targets (campaign_id, device_id, target_version, state, targeted_at) VALUES"
            " ('K1', 'A', '1.1', 'committed', %(in)s), ('K1', 'B', '1.1', 'failed', %(in)s),"
            " ('K1', 'C', '1.1', 'unreachable', %(in)s), ('K0', 'D', '1.1', 'committed', %(before)s)",
            {"in": at(1, 3), "before": at(31, 3)},
        )


@pytest.fixture
async def figures(machine_database):
    async with open_pool(machine_database) as pool:
        await migrate(pool)
        load_fixture(machine_database)
        yield FleetFigures(pool), pool


async def test_fleet_figures_match_the_hand_computed_fixture(figures):
    engine, _ = figures
    [f] = await engine.compute(START, END)
    assert f.devices == 5
    assert f.deployed_hours == pytest.approx(102)
    assert f.operating_hours == pytest.approx(96.5)
    assert f.intact_rate == pytest.approx(99.5 / 102)
    assert f.availability_calendar == pytest.approx(96.5 / 102)
    assert f.availability_business == pytest.approx(43 / 44)
    assert f.failures == 1  # A's; D's fault began before the window
    assert f.mtbf_h == pytest.approx(96.5)
    assert f.fault_rate_per_hour == pytest.approx(1 / 96.5)
    assert f.fault_rate_downtime == pytest.approx(1.5 / 98)
    assert f.repairs == 2
    assert f.mttr_min == pytest.approx((30 + 120) / 2)
    # Local (UTC+8) days Nov 1 and Nov 2 both overlap the window; every device was deployed on
    # both; seen: A twice, B, C, E once: 5 of 10.
    assert (f.deployed_days, f.seen_days) == (10, 5)
    assert f.power_on_rate == pytest.approx(0.5)
    # P1 on A played, on B missed; P2 silenced on C counts; P3 had no device; P4 in flight.
    assert (f.announcements, f.announcements_played) == (4, 2)
    assert f.delivery_rate == pytest.approx(0.5)
    assert f.latency_p50_ms == pytest.approx(40)
    assert (f.ota_targeted, f.ota_reached, f.ota_unreachable) == (2, 1, 1)
    assert f.ota_success_rate == pytest.approx(0.5)


async def test_figures_by_store_and_by_merchant(figures):
    engine, _ = figures
    by_store = {f.key: f for f in await engine.compute(START, END, group_by=Level.STORE)}
    assert set(by_store) == {"S1", "S2"}
    assert by_store["S1"].deployed_hours == pytest.approx(24 + 12 + 24)
    assert by_store["S1"].availability_calendar == pytest.approx((23.5 + 12 + 20) / 60)
    assert by_store["S2"].mttr_min == pytest.approx(120)
    assert by_store["S2"].failures == 0
    # P3 (merchant MX, no devices) belongs to store S2 and is missed there.
    assert (by_store["S2"].announcements, by_store["S2"].announcements_played) == (1, 0)
    by_merchant = {f.key: f for f in await engine.compute(START, END, group_by=Level.MERCHANT)}
    assert by_merchant["MA"].delivery_rate == pytest.approx(0.5)
    assert by_merchant["MX"].delivery_rate == 0
    assert by_merchant["MA"].availability_business == pytest.approx(1.0)


async def test_a_slice_sees_only_its_devices(figures):
    engine, _ = figures
    [d] = await engine.compute(START, END, scope=(Level.DEVICE, "D"))
    assert (d.devices, d.failures, d.repairs) == (1, 0, 1)
    assert d.availability_calendar == pytest.approx(23 / 24)
    assert d.availability_business == pytest.approx(13 / 14)
    [model] = await engine.compute(START, END, scope=(Level.MODEL, "HD-P1"))
    assert model.devices == 2  # C and E
    assert model.deployed_hours == pytest.approx(42)
    assert model.announcements == 1  # P2 on C; unrouted payments have no model
    districts = await engine.compute(START, END, scope=(Level.CITY, "C1"), group_by=Level.DISTRICT)
    assert [(f.key, f.devices) for f in districts] == [("D1", 3), ("D2", 2)]
    assert await engine.compute(START, END, scope=(Level.CITY, "elsewhere"), group_by=Level.DISTRICT) == []


async def test_window_edges_clip_intervals(figures):
    engine, _ = figures
    # 06:05-06:20 lies inside A's failure run: A is all down, nothing fails or is repaired in it.
    [f] = await engine.compute(at(1, 6, 5), at(1, 6, 20), scope=(Level.DEVICE, "A"))
    assert f.deployed_hours == pytest.approx(0.25)
    assert f.availability_calendar == 0
    assert (f.failures, f.repairs) == (0, 0)
    # A window ending exactly at the fault counts no failure; one starting at it counts it.
    [before] = await engine.compute(at(1, 0), at(1, 6), scope=(Level.DEVICE, "A"))
    [after] = await engine.compute(at(1, 6), at(1, 7), scope=(Level.DEVICE, "A"))
    assert (before.failures, after.failures) == (0, 1)
    assert before.availability_calendar == 1
    assert after.mttr_min == pytest.approx(30)


async def test_point_in_time_intact_rate(figures):
    _, pool = figures
    counts = await state_counts(pool, at(1, 23, 30))
    # A, B, D in service; C suspected lost; E retired (not deployed).
    assert counts.by_state == {"in_service": 3, "suspected_lost": 1, "retired": 1}
    assert (counts.deployed, counts.good) == (4, 3)
    assert counts.intact_rate == pytest.approx(0.75)


async def test_bad_windows_are_refused(figures):
    engine, _ = figures
    with pytest.raises(FiguresError, match="empty window"):
        await engine.compute(END, START)


def test_ratings_against_targets():
    assert rating("availability_calendar", 0.9998) == "green"
    assert rating("availability_calendar", 0.9990) == "amber"
    assert rating("availability_calendar", 0.95) == "red"
    assert rating("mttr_min", 12) == "green"
    assert rating("mttr_min", 20) == "amber"
    assert rating("mttr_min", 40) == "red"
    assert rating("mtbf_h", None) == "none"
