"""The device lifecycle against a real PostgreSQL: stock from a packing list, allocation, install
(bound, located, deployed from that moment), the test announcement that closes it, return,
repair, restock, scrap, loss and swap; every change in `device_stages`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleet_server.devices.importer import import_registry
from fleet_server.errors import ImportRefused, LifecycleError
from fleet_server.figures.figures import FleetFigures
from fleet_server.ingest.consumer import write_batch
from fleet_server.inspection.detectors import InspectionThresholds
from fleet_server.inspection.inspector import Inspector
from fleet_server.inspection.tasks import TaskBook
from fleet_server.lifecycle.book import Lifecycle, Position
from fleet_server.lifecycle.stages import Action, Stage
from fleet_server.lifecycle.stock import stock
from tests.integration.test_fleet_server import HEADER, T0, health, pool, row, state_of

pytestmark = [pytest.mark.anyio, pytest.mark.integration]
__all__ = ["pool"]  # the fixture, shared with the fleet server's tests

PACKING = "device_id,serial,model\n" + "".join(f"N{i},SNN{i},HD-S1\n" for i in range(1, 5))


async def _world(pool) -> Lifecycle:
    """Stores S1 (merchant M1, with a registered device D1 bound to it) and S2 (M2), four new
    devices N1..N4 in stock."""
    await import_registry(pool, HEADER + row("D1", "SN1") + row("D2", "SN2", "M2", store_id="S2"), dry_run=False)
    await stock(pool, PACKING, dry_run=False, by="ops", now=T0)
    return Lifecycle(pool)


async def _sql(pool, query: str, params: object = None) -> list[tuple[object, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


async def _task(pool, device: str) -> int:
    [(task_id,)] = await _sql(
        pool,
        "INSERT INTO tasks (device_id, kind, store_id, confidence, evidence, action_zh, action_en, opened_at,"
        " updated_at) VALUES (%s, 'faulty', 'S1', 0.9, '{}', '检查设备', 'check', %s, %s) RETURNING task_id",
        (device, T0, T0),
    )
    return int(task_id)


async def test_stock_comes_from_a_packing_list_checked_row_by_row(pool):
    await import_registry(pool, HEADER + row("D1", "SN1"), dry_run=False)
    # Excel's byte order mark, a duplicate serial, a bad id, a device already deployed.
    text = "\ufeffdevice_id,serial,model\nN1,SNN1,HD-S1\nN2,SNN1,HD-S1\nbad id,X,HD-S1\nD1,SN1,HD-S1\nN3,SNN3,HD-S1\n"
    dry = await stock(pool, text, dry_run=True, by="ops", now=T0)
    assert (dry.rows, dry.valid, dry.invalid, dry.applied) == (5, 2, 3, 0)
    assert {p.line: p.errors[0].split(" ")[0] for p in dry.problems} == {3: "serial", 4: "device_id", 5: "device"}
    assert await _sql(pool, "SELECT count(*) FROM devices WHERE stage IS NOT NULL") == [(0,)]
    done = await stock(pool, text, dry_run=False, by="ops", now=T0)
    assert (done.applied, done.unchanged) == (2, 0)
    assert await _sql(pool, "SELECT device_id, stage FROM devices WHERE stage IS NOT NULL ORDER BY 1") == [
        ("N1", "in_stock"),
        ("N3", "in_stock"),
    ]
    again = await stock(pool, "device_id,serial,model\nN1,SNN1,HD-S1\n", dry_run=False, by="ops", now=T0)
    assert (again.applied, again.unchanged, again.invalid) == (0, 1, 0)
    # Switched on at the factory before it was stocked: deployed by the old rule until stocked.
    await write_batch(pool, [health("N9", T0)])
    assert await state_of(pool, "N9") == "in_service"
    seen = await stock(pool, "device_id,serial,model\nN9,SNN9,HD-S1\n", dry_run=False, by="ops", now=T0)
    assert (seen.applied, seen.invalid) == (1, 0)
    assert await state_of(pool, "N9") == "retired"
    life = Lifecycle(pool)
    await life.allocate(["N9"], store_id="S1", agent_id=None, by="ops", now=T0)
    await life.install("N9", "M1", None, address=None, by="agent", agent_id=None, now=T0 + timedelta(hours=1))
    assert await state_of(pool, "N9") == "in_service"
    with pytest.raises(ImportRefused, match="lacks model"):
        await stock(pool, "device_id,serial\nN9,S9\n", dry_run=True, by="ops", now=T0)


async def test_a_device_is_deployed_from_its_install_not_from_its_first_switch_on(pool):
    life = await _world(pool)
    # Switched on in the warehouse: seen, but in no state and no figure.
    await write_batch(pool, [health("N1", T0 + timedelta(hours=1))])
    assert await state_of(pool, "N1") is None
    with pytest.raises(LifecycleError, match="is in_stock: install is not allowed") as refused:
        await life.install("N1", "M1", None, address=None, by="agent", agent_id=None, now=T0)
    assert refused.value.status == 409
    [allocated] = await life.allocate(["N1"], store_id="S1", agent_id=None, by="ops", now=T0)
    assert (allocated.previous, allocated.stage) == (Stage.IN_STOCK, Stage.ALLOCATED)
    await write_batch(pool, [health("N1", T0 + timedelta(hours=2))])
    assert await state_of(pool, "N1") is None
    with pytest.raises(LifecycleError, match="merchant of store S2") as wrong:
        await life.install("N1", "M2", None, address=None, by="agent", agent_id=None, now=T0)
    assert wrong.value.code == "WRONG_STORE"
    at = T0 + timedelta(hours=12)
    sent = []
    life.on_alert = sent.append
    change = await life.install(
        "N1", "M1", Position(39.98, 116.48, 15.0), address="望京西路 1 号", by="agent", agent_id="A1", now=at
    )
    assert (change.stage, change.merchant_id) == (Stage.INSTALLED, "M1")
    [alert] = sent
    assert (alert.device_id, alert.code.value, alert.alert_id) == ("N1", "bound", change.alert_id)
    assert await state_of(pool, "N1") == "in_service"
    assert await _sql(
        pool,
        "SELECT installed_at, install_lat, install_lon, install_address, agent_id FROM devices WHERE device_id = 'N1'",
    ) == [(at, 39.98, 116.48, "望京西路 1 号", "A1")]
    assert await _sql(pool, "SELECT merchant_id FROM bindings WHERE device_id = 'N1'") == [("M1",)]
    assert await _sql(pool, "SELECT status FROM deliveries WHERE payment_id = %s", (alert.alert_id,)) == [("pending",)]
    # Deployed from the install: 12 of the day's 24 hours.
    [f] = await FleetFigures(pool).compute(T0, T0 + timedelta(days=1))
    assert (f.devices, f.deployed_hours) == (1, pytest.approx(12))
    # The install closes with a test announcement that played, sent since the install.
    with pytest.raises(LifecycleError, match="has not played") as untested:
        await life.commission("N1", "cmd-1", by="agent", now=at)
    assert untested.value.code == "NOT_TESTED"
    await _sql(
        pool,
        "INSERT INTO device_commands (command_id, device_id, name, issued_by, issued_at, status, updated_at)"
        " VALUES ('cmd-1', 'N1', 'test_announce', 'agent', %s, 'succeeded', %s) RETURNING 1",
        (at + timedelta(minutes=1), at + timedelta(minutes=1)),
    )
    done = await life.commission("N1", "cmd-1", by="agent", now=at + timedelta(minutes=2))
    assert done.stage is Stage.IN_SERVICE
    # Carried 7 km away on its first day, before any cell is learned: the install position tells.
    await write_batch(pool, [health("N1", at + timedelta(hours=1), gps=(40.05, 116.48))])
    report = await Inspector(pool, InspectionThresholds()).run_once(at + timedelta(hours=1, minutes=1))
    [moved] = [f for f in report.findings if f.device_id == "N1"]
    assert (moved.kind.value, moved.evidence["judged_by"]) == ("relocated", "install_position")
    history = await life.history("N1")
    assert [(e.action, e.stage) for e in history] == [
        (Action.COMMISSION, Stage.IN_SERVICE),
        (Action.INSTALL, Stage.INSTALLED),
        (Action.ALLOCATE, Stage.ALLOCATED),
        (Action.STOCK, Stage.IN_STOCK),
    ]


async def test_a_device_reported_lost_leaves_the_deployed_figures_and_its_task_closes(pool):
    life = await _world(pool)
    await life.allocate(["N1", "N2"], store_id="S1", agent_id=None, by="ops", now=T0)
    for device in ("N1", "N2"):
        await life.install(device, "M1", None, address=None, by="agent", agent_id=None, now=T0)
    task = await _task(pool, "N1")
    lost_at = T0 + timedelta(days=2)
    change = await life.move("N1", Action.LOSE, "商户说被偷了", by="ops", now=lost_at)
    assert (change.stage, change.closed_tasks) == (Stage.LOST, [task])
    assert (await TaskBook(pool).get(task)).status == "closed"
    assert await state_of(pool, "N1") == "retired"
    assert await _sql(pool, "SELECT count(*) FROM bindings WHERE device_id = 'N1'") == [(0,)]
    [before] = await FleetFigures(pool).compute(T0, lost_at)
    [after] = await FleetFigures(pool).compute(lost_at, lost_at + timedelta(days=1))
    assert (before.devices, before.deployed_hours) == (2, pytest.approx(2 * 48))
    assert (after.devices, after.deployed_hours) == (1, pytest.approx(24))
    # Lost is final; the thief switching it on changes nothing.
    await write_batch(pool, [health("N1", lost_at + timedelta(hours=1))])
    assert await state_of(pool, "N1") == "retired"
    for action in (Action.RESTOCK, Action.LOSE, Action.SCRAP):
        with pytest.raises(LifecycleError, match=r"is lost: \w+ is not allowed"):
            await life.move("N1", action, "", by="ops", now=lost_at)


async def test_a_swap_gives_the_new_device_the_merchant_the_place_and_the_open_tasks(pool):
    life = await _world(pool)
    await life.allocate(["N1", "N2"], store_id="S1", agent_id=None, by="ops", now=T0)
    await life.allocate(["N3"], store_id="S2", agent_id=None, by="ops", now=T0)
    await life.install("N1", "M1", Position(39.9, 116.4), address="店门口", by="agent", agent_id=None, now=T0)
    task = await _task(pool, "N1")
    with pytest.raises(LifecycleError, match="merchant of store S1") as wrong:
        await life.swap("N1", "N3", None, by="agent", agent_id=None, now=T0 + timedelta(hours=1))
    assert wrong.value.code == "WRONG_STORE"
    sent = []
    life.on_alert = sent.append
    at = T0 + timedelta(hours=2)
    old, new = await life.swap("N1", "N2", None, by="agent", agent_id=None, now=at)
    assert (old.stage, old.moved_tasks, old.closed_tasks) == (Stage.RETURNED, [task], [])
    assert (new.stage, new.merchant_id, new.moved_tasks) == (Stage.INSTALLED, "M1", [task])
    assert [(a.device_id, a.code.value) for a in sent] == [("N2", "bound")]  # the broken one is told nothing
    assert await _sql(pool, "SELECT device_id, merchant_id FROM bindings WHERE merchant_id = 'M1' ORDER BY 1") == [
        ("D1", "M1"),
        ("N2", "M1"),
    ]
    moved = await TaskBook(pool).get(task)
    assert (moved.device_id, moved.status) == ("N2", "open")
    assert (await state_of(pool, "N1"), await state_of(pool, "N2")) == ("retired", "in_service")
    assert await _sql(pool, "SELECT install_lat, install_lon, install_address FROM devices WHERE device_id = 'N2'") == [
        (39.9, 116.4, "店门口")
    ]
    with pytest.raises(LifecycleError, match="is returned: swap_out is not allowed"):
        await life.swap("N1", "N2", None, by="agent", agent_id=None, now=at)


async def test_return_repair_restock_and_scrap(pool):
    life = await _world(pool)
    await life.allocate(["N1", "N2"], store_id="S1", agent_id="A1", by="ops", now=T0)
    # An allocated device not needed goes back to stock, its store forgotten.
    unused = await life.give_back("N2", "", by="agent", now=T0)
    assert unused.stage is Stage.IN_STOCK
    assert await _sql(pool, "SELECT store_id, agent_id FROM devices WHERE device_id = 'N2'") == [(None, None)]
    await life.install("N1", "M1", Position(39.9, 116.4), address=None, by="agent", agent_id=None, now=T0)
    task = await _task(pool, "N1")
    sent = []
    life.on_alert = sent.append
    back = await life.give_back("N1", "商户关店", by="agent", now=T0 + timedelta(days=1))
    assert (back.stage, back.closed_tasks) == (Stage.RETURNED, [task])
    assert [(a.device_id, a.code.value) for a in sent] == [("N1", "unbound")]  # it says 设备已解绑
    assert await state_of(pool, "N1") == "retired"
    assert (
        await life.move("N1", Action.REPAIR, "喇叭破音", by="ops", now=T0 + timedelta(days=2))
    ).stage is Stage.IN_REPAIR
    assert (await life.move("N1", Action.RESTOCK, "", by="ops", now=T0 + timedelta(days=3))).stage is Stage.IN_STOCK
    assert await _sql(pool, "SELECT install_lat, installed_at FROM devices WHERE device_id = 'N1'") == [(None, None)]
    # Back from repair and restocked, it is installed again: a second deployed span, and a
    # window over both counts it once.
    await life.allocate(["N1"], store_id="S1", agent_id=None, by="ops", now=T0 + timedelta(days=3))
    again = await life.install("N1", "M1", None, address=None, by="agent", agent_id=None, now=T0 + timedelta(days=4))
    assert again.stage is Stage.INSTALLED
    assert await state_of(pool, "N1") == "in_service"
    [whole] = await FleetFigures(pool).compute(T0, T0 + timedelta(days=5))
    assert (whole.devices, whole.deployed_hours) == (1, pytest.approx(24 * 2))
    await life.give_back("N1", "", by="agent", now=T0 + timedelta(days=5))
    assert (await life.move("N2", Action.SCRAP, "进水", by="ops", now=T0)).stage is Stage.SCRAPPED
    with pytest.raises(LifecycleError, match=r"is scrapped: allocate is not allowed \(allowed: nothing\)"):
        await life.allocate(["N2"], store_id="S1", agent_id=None, by="ops", now=T0)
    counts = {(c.store_id, c.stage.value): c.devices for c in await life.counts()}
    assert counts == {
        ("S1", "in_service"): 1,  # D1, registered before the lifecycle
        ("S2", "in_service"): 1,  # D2
        ("S1", "returned"): 1,  # N1
        (None, "in_stock"): 2,  # N3, N4
        (None, "scrapped"): 1,  # N2
    }
    with pytest.raises(LifecycleError, match="not found") as missing:
        await life.move("NOPE", Action.SCRAP, "", by="ops", now=T0)
    assert missing.value.status == 404
