"""Fleet server against a real PostgreSQL: ingest drives the state machine, the inspector
opens tasks and verifies them, the registry imports CSV, telemetry is partitioned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from firmware_protocols.messages import CellReport, Event, GpsFix, Health, Hello, Presence
from fleet_server.db.migrate import migrate
from fleet_server.db.pool import open_pool
from fleet_server.devices.importer import import_registry
from fleet_server.errors import ImportRefused, TaskError
from fleet_server.figures.figures import FleetFigures, state_counts
from fleet_server.ingest.consumer import IngestPolicy, Received, write_batch
from fleet_server.ingest.telemetry import StorageMode, TelemetryStore
from fleet_server.inspection.detectors import InspectionThresholds
from fleet_server.inspection.inspector import Inspector
from fleet_server.inspection.tasks import RetireReason

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

T0 = datetime(2026, 11, 20, 2, tzinfo=UTC)
HEADER = (
    "city_id,city_name,district_id,district_name,store_id,store_name,agent_id,agent_name,merchant_id,"
    "merchant_name,device_id,serial,model,installed_at,install_lat,install_lon\n"
)


def row(device: str, serial: str, merchant: str = "M1", **over: str) -> str:
    values = {
        "city_id": "BJ",
        "city_name": "北京",
        "district_id": "WJ",
        "district_name": "望京",
        "store_id": "S1",
        "store_name": "望京店",
        "agent_id": "A1",
        "agent_name": "王经纪",
        "merchant_id": merchant,
        "merchant_name": "面馆",
        "device_id": device,
        "serial": serial,
        "model": "HD-S1",
        "installed_at": "2026-11-19T08:00:00+08:00",
        "install_lat": "39.99",
        "install_lon": "116.47",
    }
    values.update(over)
    return ",".join(values[k] for k in HEADER.strip().split(",")) + "\n"


@pytest.fixture
async def pool(machine_database):
    async with open_pool(machine_database) as pool:
        await migrate(pool)
        yield pool


def health(
    device: str,
    at: datetime,
    *,
    cell: str = "10",
    area: str = "1A2B",
    audio: str = "pass",
    gps: tuple[float, float] | None = None,
) -> Received:
    msg = Health(
        device_id=device,
        ts=int(at.timestamp() * 1000),
        uptime_s=10,
        volume=5,
        queue_depth=0,
        played_total=0,
        cell=CellReport(rat="LTE", mcc=460, mnc=0, area=area, cell_id=cell),
        audio_selftest=audio,
        gps=GpsFix(lat=gps[0], lon=gps[1]) if gps else None,
    )
    return Received(at, msg)


async def state_of(pool, device: str) -> str | None:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state FROM devices WHERE device_id = %s", (device,))
        row = await cur.fetchone()
        return row[0] if row else None


async def test_registry_import_dry_run_reports_per_row_and_applies_nothing(pool):
    text = HEADER + row("D1", "SN1") + row("D2", "SN1") + row("bad id!", "SN3") + row("D4", "SN4", install_lat="91")
    report = await import_registry(pool, text, dry_run=True)
    assert (report.rows, report.valid, report.invalid, report.applied) == (4, 1, 3, 0)
    problems = {p.line: p.errors for p in report.problems}
    assert "serial SN1 is also given to device D1" in problems[3][0]
    assert "not a valid device id" in problems[4][0]
    assert "install_lat 91.0 is outside" in problems[5][0]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM devices")
        assert (await cur.fetchone())[0] == 0


async def test_registry_import_applies_good_rows_and_keeps_binding_rules(pool):
    report = await import_registry(pool, HEADER + row("D1", "SN1") + row("D2", "SN2", merchant="M2"), dry_run=False)
    assert (report.applied, report.creates, report.problems) == (2, 2, [])
    # Again: D1 to another merchant is refused (one merchant per device), SN2 cannot move to D3.
    again = await import_registry(pool, HEADER + row("D1", "SN1", merchant="M9") + row("D3", "SN2"), dry_run=False)
    assert again.applied == 0
    errors = " ".join(e for p in again.problems for e in p.errors)
    assert "bound to merchant M1" in errors
    assert "serial SN2 already belongs to device D2" in errors
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT d.device_id, b.merchant_id, m.store_id, s.district_id, di.city_id, d.install_lat FROM devices d"
            " JOIN bindings b ON b.device_id = d.device_id JOIN merchants m ON m.merchant_id = b.merchant_id"
            " JOIN stores s ON s.store_id = m.store_id JOIN districts di ON di.district_id = s.district_id ORDER BY 1"
        )
        assert await cur.fetchall() == [("D1", "M1", "S1", "WJ", "BJ", 39.99), ("D2", "M2", "S1", "WJ", "BJ", 39.99)]
    with pytest.raises(ImportRefused, match="lacks district_id, store_id, merchant_id, device_id, model"):
        await import_registry(pool, "city_id,serial\nBJ,1\n", dry_run=True)


async def test_faulty_device_gets_a_task_that_closes_only_when_verified(pool):
    await import_registry(pool, HEADER + row("D1", "SN1"), dry_run=False)
    hello = Hello(device_id="D1", ts=1, model="HD-S1", serial="SN1", firmware="1.0", boot_id="b1")
    await write_batch(pool, [Received(T0, hello), health("D1", T0 + timedelta(seconds=5))])
    assert await state_of(pool, "D1") == "in_service"
    await write_batch(pool, [health("D1", T0 + timedelta(minutes=1), audio="fail")])
    assert await state_of(pool, "D1") == "faulty"
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600))
    first = await inspector.run_once(T0 + timedelta(minutes=2))
    assert first.opened == 1
    [task] = await inspector.tasks.find(device_id="D1")
    assert (task.kind, task.status, task.agent_id, task.store_id) == ("faulty", "open", "A1", "S1")
    # Found again: merged, not a second task.
    second = await inspector.run_once(T0 + timedelta(minutes=3))
    assert (second.opened, second.merged) == (0, 1)
    await inspector.tasks.start(task.task_id, T0 + timedelta(minutes=4))
    assert await state_of(pool, "D1") == "under_repair"
    await inspector.tasks.request_close(task.task_id, "换了喇叭", T0 + timedelta(minutes=10))
    # Clicking close does not close it: the device has not been verified yet.
    await inspector.run_once(T0 + timedelta(minutes=11))
    waiting = await inspector.tasks.get(task.task_id)
    assert waiting.status == "verifying"
    assert "waiting" in (waiting.verification or "")
    with pytest.raises(TaskError, match="verifying"):
        await inspector.tasks.start(task.task_id, T0 + timedelta(minutes=11))
    await write_batch(pool, [health("D1", T0 + timedelta(minutes=12)), health("D1", T0 + timedelta(minutes=13))])
    assert await state_of(pool, "D1") == "in_service"
    done = await inspector.run_once(T0 + timedelta(minutes=14))
    assert done.closed_tasks == [task.task_id]
    # The repair feeds MTTR: fault at +1 min, verified at +13 min.
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(hours=1))
    assert (f.failures, f.repairs) == (1, 1)
    assert f.mttr_min == pytest.approx(12)


async def test_silent_device_goes_offline_then_suspected_lost_with_a_task(pool):
    await import_registry(pool, HEADER + row("D1", "SN1"), dry_run=False)
    await write_batch(pool, [health("D1", T0)])
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=60, lost_after_days=2))
    await inspector.run_once(T0 + timedelta(seconds=80))  # 1.5 x 60 s not yet passed
    assert await state_of(pool, "D1") == "in_service"
    report = await inspector.run_once(T0 + timedelta(seconds=100))
    assert report.went_offline == 1
    assert await state_of(pool, "D1") == "offline"
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT at, cause FROM device_states WHERE state = 'offline'")
        assert await cur.fetchall() == [(T0 + timedelta(seconds=90), "heartbeat_missed")]
    lost = await inspector.run_once(T0 + timedelta(days=3))
    assert [f.kind for f in lost.findings] == ["lost"]
    assert await state_of(pool, "D1") == "suspected_lost"
    # It turns up again: seen, and the lost task verifies once asked to close.
    await write_batch(pool, [health("D1", T0 + timedelta(days=3, minutes=1))])
    assert await state_of(pool, "D1") == "in_service"
    [task] = await inspector.tasks.find(device_id="D1")
    await inspector.tasks.request_close(task.task_id, "商户找到了", T0 + timedelta(days=3, minutes=1, seconds=20))
    closed = await inspector.run_once(T0 + timedelta(days=3, minutes=1, seconds=30))
    assert closed.closed_tasks == [task.task_id]


async def test_a_device_reporting_every_300_s_is_expected_at_its_own_interval(pool):
    await import_registry(pool, HEADER + row("D1", "SN1") + row("D2", "SN2"), dry_run=False)
    slow = Health(
        device_id="D1",
        ts=int(T0.timestamp() * 1000),
        uptime_s=1,
        volume=5,
        queue_depth=0,
        played_total=0,
        interval_s=300,
    )
    await write_batch(pool, [Received(T0, slow), health("D2", T0)])  # D2 says no interval: the default
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=60))
    report = await inspector.run_once(T0 + timedelta(seconds=200))
    assert (report.went_offline, await state_of(pool, "D1"), await state_of(pool, "D2")) == (1, "in_service", "offline")
    await inspector.run_once(T0 + timedelta(seconds=440))
    assert await state_of(pool, "D1") == "in_service"  # 1.5 x 300 s not yet passed
    await inspector.run_once(T0 + timedelta(seconds=460))
    assert await state_of(pool, "D1") == "offline"
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT device_id, at, detail->>'silent_s' FROM device_states WHERE state = 'offline' ORDER BY 1"
        )
        assert await cur.fetchall() == [
            ("D1", T0 + timedelta(seconds=450), "450"),
            ("D2", T0 + timedelta(seconds=90), "90"),
        ]
    # Told 60 s again: its next report says so, and 1.5 x 60 s of silence is offline again.
    fast = slow.model_copy(update={"ts": slow.ts + 500_000, "interval_s": 60})
    await write_batch(pool, [Received(T0 + timedelta(seconds=500), fast)])
    await inspector.run_once(T0 + timedelta(seconds=600))
    assert await state_of(pool, "D1") == "offline"


async def test_a_device_lost_for_good_is_retired_its_task_closed_and_out_of_the_figures(pool):
    await import_registry(pool, HEADER + row("D1", "SN1") + row("D2", "SN2"), dry_run=False)
    await write_batch(pool, [health("D1", T0), health("D2", T0)])
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=60, lost_after_days=2))
    await inspector.run_once(T0 + timedelta(minutes=2))
    assert await state_of(pool, "D1") == "offline"
    await inspector.run_once(T0 + timedelta(days=3))
    assert await state_of(pool, "D1") == "suspected_lost"
    [task] = await inspector.tasks.find(device_id="D1")
    assert (task.kind, task.status) == ("lost", "open")
    retired_at = T0 + timedelta(days=4)
    done = await inspector.tasks.retire("D1", RetireReason.STOLEN, "商户报案", by="ops1", now=retired_at)
    assert (done.previous_state, done.closed_tasks) == ("suspected_lost", [task.task_id])
    closed = await inspector.tasks.get(task.task_id)
    assert (closed.status, closed.closed_at) == ("closed", retired_at)
    assert "retired (stolen) by ops1: 商户报案" in (closed.verification or "")
    assert await state_of(pool, "D1") == "retired"
    # Deployed until the moment it was retired, not after: 4 days of D1 and 5 of D2 (lost too,
    # but not given up on: still deployed).
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(days=5))
    assert f.deployed_hours == pytest.approx(24 * (4 + 5))
    [after] = await FleetFigures(pool).compute(retired_at, T0 + timedelta(days=5))
    assert (after.devices, after.deployed_hours) == (1, pytest.approx(24))
    counts = await state_counts(pool, retired_at + timedelta(seconds=1))
    assert (counts.deployed, counts.by_state.get("retired")) == (1, 1)
    # It talks again (found by a thief, switched on): still retired, no task, and it cannot be retired twice.
    await write_batch(pool, [health("D1", retired_at + timedelta(hours=1))])
    assert await state_of(pool, "D1") == "retired"
    again = await inspector.run_once(retired_at + timedelta(hours=1, minutes=1))
    assert [f.device_id for f in again.findings] == ["D2"]  # D2 is still lost: only its own task
    with pytest.raises(TaskError, match="retired already"):
        await inspector.tasks.retire("D1", RetireReason.LOST, "", by="ops1", now=retired_at + timedelta(hours=2))
    with pytest.raises(TaskError, match="not found"):
        await inspector.tasks.retire("NOPE", RetireReason.SCRAPPED, "", by="ops1", now=retired_at)


async def test_moved_device_is_found_relocated_and_back_in_place(pool):
    await import_registry(pool, HEADER + row("D1", "SN1", installed_at=T0.isoformat()), dry_run=False)
    await write_batch(pool, [health("D1", T0 + timedelta(minutes=m)) for m in range(5)])  # learning at home
    policy = IngestPolicy(cell_learning_days=1)
    later = T0 + timedelta(days=2)
    moved = [health("D1", later + timedelta(minutes=m), cell="77", area="9F00") for m in range(4)]
    await write_batch(pool, moved, policy)
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600))
    report = await inspector.run_once(later + timedelta(minutes=5))
    [finding] = report.findings
    assert finding.kind == "relocated"
    assert finding.confidence == 0.9
    assert await state_of(pool, "D1") == "relocated"
    await write_batch(pool, [health("D1", later + timedelta(hours=1))], policy)  # home again
    back = await inspector.run_once(later + timedelta(hours=1, minutes=1))
    assert back.back_in_place == 1
    assert await state_of(pool, "D1") == "in_service"


async def test_a_device_moved_during_its_learning_days_is_found_relocated(pool):
    """Every cell of the first 3 days is learned; a device moved on its second day used to learn
    its new place as home. Its first hours are where it was installed (detectors.home_cells)."""
    registry = HEADER + row("DL1", "SNL1", installed_at=T0.isoformat())
    await import_registry(
        pool, registry + row("DL2", "SNL2", merchant="M2", installed_at=T0.isoformat()), dry_run=False
    )
    first_hours = [health(d, T0 + timedelta(minutes=m)) for m in range(0, 120, 30) for d in ("DL1", "DL2")]
    await write_batch(pool, first_hours)
    day2 = T0 + timedelta(days=1)
    # DL1 is carried to another district; DL2 hands over to a neighbour cell and back home.
    moved = [health("DL1", day2 + timedelta(minutes=m), cell="77", area="9F00") for m in range(4)]
    neighbour = [health("DL2", day2 + timedelta(minutes=m), cell="11") for m in range(4)]
    await write_batch(pool, [*moved, *neighbour, health("DL2", day2 + timedelta(minutes=5))])
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT bool_and(learned) FROM device_cells")
        assert (await cur.fetchone())[0], "all cells were seen within the learning days"
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600))
    report = await inspector.run_once(day2 + timedelta(minutes=6))
    [finding] = report.findings
    assert (finding.device_id, finding.kind, finding.confidence) == ("DL1", "relocated", 0.9)
    assert finding.evidence["learned_cells"] == ["460-0-1A2B-10"]
    assert (await state_of(pool, "DL1"), await state_of(pool, "DL2")) == ("relocated", "in_service")
    # Carried back: in place again.
    await write_batch(pool, [health("DL1", day2 + timedelta(hours=1))])
    assert (await inspector.run_once(day2 + timedelta(hours=1, minutes=1))).back_in_place == 1
    assert await state_of(pool, "DL1") == "in_service"


async def _payment(pool, payment_id: str, merchant: str, at: datetime) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO payments (payment_id, source, notify_id, merchant_id, amount_fen, channel, kind, status,"
            " paid_at, received_at, raw)"
            " VALUES (%s, 'test', %s, %s, 1250, 'wechat', 'payment', 'success', %s, %s, '{}')",
            (payment_id, payment_id, merchant, at, at),
        )


async def test_the_idle_detector_finds_a_device_whose_merchant_stopped_taking_payments(pool):
    """Through the inspector's SQL (issue 25 asked for it): a merchant whose last payment is 9 days
    old has an idle device and a task; one paid an hour ago has neither; a merchant never paid
    (a new shop) is not idle yet."""
    registry = HEADER + row("DI1", "SNI1", merchant="MI1") + row("DB1", "SNB1", merchant="MB1")
    await import_registry(pool, registry + row("DN1", "SNN1", merchant="MN1"), dry_run=False)
    now = T0 + timedelta(days=20)
    await write_batch(pool, [health(d, now - timedelta(minutes=5)) for d in ("DI1", "DB1", "DN1")])
    await _payment(pool, "PI-first", "MI1", now - timedelta(days=15))
    await _payment(pool, "PI-last", "MI1", now - timedelta(days=9))
    await _payment(pool, "PB-last", "MB1", now - timedelta(hours=1))
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600, idle_after_days=7))
    report = await inspector.run_once(now)
    [finding] = [f for f in report.findings if f.device_id in ("DI1", "DB1", "DN1")]
    assert (finding.device_id, finding.kind) == ("DI1", "idle")
    assert finding.evidence["quiet_days"] == 9.0
    assert await state_of(pool, "DI1") == "idle"
    assert (await state_of(pool, "DB1"), await state_of(pool, "DN1")) == ("in_service", "in_service")
    [task] = await inspector.tasks.find(device_id="DI1")
    assert task.kind == "idle"
    # The merchant takes a payment again: the device is in service and the task can close.
    await _payment(pool, "PI-again", "MI1", now + timedelta(minutes=1))
    await write_batch(pool, [health("DI1", now + timedelta(minutes=2))])
    await inspector.run_once(now + timedelta(minutes=3))
    assert await state_of(pool, "DI1") == "in_service"


def fault(device: str, at: datetime, part: str, state: str, was: str | None = "ok") -> Received:
    detail = {"part": part, "state": state, "was": was}
    return Received(at, Event(device_id=device, ts=int(at.timestamp() * 1000), kind="fault", detail=detail))


async def test_a_printer_out_of_paper_makes_a_maintenance_task_and_no_failure(pool):
    """The printer stops no announcement (fleet_server.devices.parts): three paper-out events
    used to make the device faulty and, two clean reports later, count a 1.9-minute "repair"."""
    await import_registry(pool, HEADER + row("D9", "SN9"), dry_run=False)
    await write_batch(pool, [health("D9", T0)])
    events = [
        fault("D9", T0 + timedelta(seconds=i), "printer", "paper_out", "ok" if i == 0 else None) for i in range(3)
    ]
    await write_batch(pool, events)
    assert await state_of(pool, "D9") == "in_service"
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600))
    report = await inspector.run_once(T0 + timedelta(seconds=5))
    [finding] = report.findings
    assert (finding.kind, finding.evidence["parts"], finding.evidence["events"]) == ("degraded", ["printer"], 3)
    assert "打印纸" in finding.action_zh
    assert await state_of(pool, "D9") == "in_service"
    [task] = await inspector.tasks.find(device_id="D9")
    assert (task.kind, task.status, task.agent_id) == ("degraded", "open", "A1")
    # The field agent starts the work: refilling paper is no repair, the device stays in service.
    await inspector.tasks.start(task.task_id, T0 + timedelta(minutes=1))
    assert await state_of(pool, "D9") == "in_service"
    await write_batch(pool, [health("D9", T0 + timedelta(minutes=m)) for m in (2, 3)])
    await inspector.tasks.request_close(task.task_id, "加了纸", T0 + timedelta(minutes=4))
    assert (await inspector.run_once(T0 + timedelta(minutes=5))).closed_tasks == [task.task_id]
    # The same events are not a new task once it closed; the figures saw no failure at all.
    assert (await inspector.run_once(T0 + timedelta(minutes=6))).opened == 0
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(hours=1))
    assert (f.failures, f.repairs, f.mttr_min, f.intact_rate, f.availability_calendar) == (0, 0, None, 1.0, 1.0)


async def test_a_speaker_fault_is_a_failure_repaired_only_once_verified(pool):
    """A fault of a part that stops announcements: a failure at once, a task, and a repair only
    when the device is verified healthy (two clean reports in a row); MTTR is detected -> verified,
    wherever the task stands."""
    await import_registry(pool, HEADER + row("D8", "SN8"), dry_run=False)
    await write_batch(pool, [health("D8", T0)])
    await write_batch(pool, [fault("D8", T0 + timedelta(minutes=1), "audio", "fail")])
    assert await state_of(pool, "D8") == "faulty"
    inspector = Inspector(pool, InspectionThresholds(heartbeat_interval_s=3600))
    assert [f.kind for f in (await inspector.run_once(T0 + timedelta(minutes=2))).findings] == ["faulty"]
    [task] = await inspector.tasks.find(device_id="D8")
    assert task.kind == "faulty"
    # One clean report is luck, not a repair: still faulty, no repair in the figures yet.
    await write_batch(pool, [health("D8", T0 + timedelta(minutes=20))])
    assert await state_of(pool, "D8") == "faulty"
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(hours=1))
    assert (f.failures, f.repairs) == (1, 0)
    # A fault again in between: the streak starts over.
    await write_batch(pool, [health("D8", T0 + timedelta(minutes=21), audio="fail")])
    await write_batch(pool, [health("D8", T0 + timedelta(minutes=m)) for m in (25, 26)])
    assert await state_of(pool, "D8") == "in_service"
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(hours=1))
    assert (f.failures, f.repairs) == (1, 1)
    assert f.mttr_min == pytest.approx(25)  # detected at +1 min, verified at +26 min
    assert f.fault_rate_downtime == pytest.approx(25 / 60)
    # The task still waits for the field agent: the device fixed itself, the visit may find why.
    assert (await inspector.tasks.get(task.task_id)).status == "open"


async def test_presence_offline_and_online_move_the_state(pool):
    await write_batch(pool, [health("D5", T0)])
    await write_batch(
        pool, [Received(T0 + timedelta(minutes=1), Presence(device_id="D5", ts=1, online=False, reason="lost"))]
    )
    assert await state_of(pool, "D5") == "offline"
    await write_batch(
        pool, [Received(T0 + timedelta(minutes=2), Presence(device_id="D5", ts=2, online=True, reason="connected"))]
    )
    assert await state_of(pool, "D5") == "in_service"


async def test_native_partitions_are_made_ahead_stray_rows_moved_and_old_days_dropped(pool, machine_database):
    store = TelemetryStore(pool, retention_days=30)
    if await store.detect() is not StorageMode.NATIVE:
        pytest.skip("native partitions only: this database has TimescaleDB hypertables")
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    # A row far in the past lands in the default partition first.
    await write_batch(
        pool,
        [
            health("D1", now),
            Received(
                now,
                Health(
                    device_id="D1",
                    ts=int((now - timedelta(days=10)).timestamp() * 1000),
                    uptime_s=1,
                    volume=1,
                    queue_depth=0,
                    played_total=0,
                ),
            ),
        ],
    )
    report = await store.maintain(now)
    assert "device_health_20261121" in report.created
    assert "device_health_20261110" in report.created
    assert report.moved_rows == 2
    with psycopg.connect(machine_database) as conn:
        assert conn.execute("SELECT count(*) FROM device_health_default").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM device_health").fetchone()[0] == 2
    later = await store.maintain(now + timedelta(days=25))
    assert "device_health_20261110" in later.dropped
    assert (await store.maintain(now + timedelta(days=25))).created == []
