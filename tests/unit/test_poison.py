"""What no store can hold is refused at the boundary; a batch is written apart around poison;
data failures are told from outages; device reports are signed and checked (issue 22)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import psycopg
import psycopg_pool
import pytest

from firmware_protocols.errors import MessageError, SignatureError
from firmware_protocols.fields import unstorable
from firmware_protocols.messages import UP_MODELS, Ack, AckStatus, CommandResult, Presence, parse_payload
from firmware_protocols.reports import report_key, sign_report, verify_report
from fleet_server.db.failures import describe, is_transient
from fleet_server.db.isolate import write_apart
from fleet_server.quarantine.store import storable_text

pytestmark = pytest.mark.anyio

BASE = {
    "hello": {"type": "hello", "model": "HD-S1", "serial": "S1", "firmware": "1.0.0", "boot_id": "b1"},
    "health": {"type": "health", "uptime_s": 1, "volume": 5, "queue_depth": 0, "played_total": 0},
    "event": {"type": "event", "kind": "fault", "detail": {"part": "printer"}},
    "presence": {"type": "presence", "online": True, "reason": "connected"},
    "ack": {"type": "ack", "payment_id": "P1", "status": "played", "received_at": 1},
    "result": {"type": "result", "command_id": "c-1", "name": "diagnose", "status": "succeeded"},
    "ota": {"type": "ota_status", "campaign_id": "k1", "version": "1.1.0", "state": "queued", "running": "1.0.0"},
}
POISON = {
    "NUL in a value": {"note": "a\u0000b"},
    "NUL in a key": {"detail_x": {"k\u0000": 1}},
    "unpaired surrogate": {"note": "\ud800"},
    "65-bit integer": {"count": 2**70},
}


@pytest.mark.parametrize("kind", sorted(BASE))
@pytest.mark.parametrize("poison", sorted(POISON))
def test_every_uplink_model_refuses_what_no_store_can_hold(kind: str, poison: str) -> None:
    model = next(m for m in UP_MODELS.values() if m.model_fields["type"].default == BASE[kind]["type"])
    good = {"v": 1, "device_id": "SPK-1", "ts": 1, **BASE[kind]}
    parse_payload(model, json.dumps(good).encode())
    with pytest.raises(MessageError, match=r"NUL|surrogate|64-bit"):
        parse_payload(model, json.dumps({**good, **POISON[poison]}).encode())


def test_nan_and_infinity_are_refused_though_python_reads_them() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        payload = b'{"v":1,"device_id":"SPK-1","ts":1,"type":"event","kind":"x","detail":{"t":' + literal + b"}}"
        with pytest.raises(MessageError, match="finite"):
            parse_payload(UP_MODELS[next(k for k in UP_MODELS if k.value == "event")], payload)


def test_unstorable_names_where_the_problem_is() -> None:
    assert unstorable({"a": [1, {"b": "ok"}]}) is None
    assert unstorable({"a": [1, {"b": "x\x00"}]}) == "a[1].b: text holds a NUL character (\\u0000)"
    assert "key" in (unstorable({"a": {"\x00": 1}}) or "")
    assert unstorable(2**63 - 1) is None
    assert unstorable(-(2**63)) is None
    assert unstorable(2**63) is not None


def test_a_signed_report_verifies_and_any_change_or_other_key_does_not() -> None:
    key, other = report_key(b"\x01" * 32), report_key(b"\x02" * 32)
    ack = sign_report(key, Ack(device_id="SPK-1", ts=5, payment_id="P1", status="played", received_at=4))
    verify_report(key, ack)
    assert ack.sig is not None
    assert len(ack.sig) == 43
    again = parse_payload(Ack, ack.to_json())
    verify_report(key, again)  # what goes over the wire verifies as it was signed
    for changed in (
        ack.model_copy(update={"payment_id": "P2"}),
        ack.model_copy(update={"status": AckStatus.FAILED}),
        ack.model_copy(update={"device_id": "SPK-2"}),
    ):
        with pytest.raises(SignatureError, match="does not verify"):
            verify_report(key, changed)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_report(other, ack)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_report(key, ack.model_copy(update={"sig": None}))


def test_an_added_field_is_covered_by_the_signature() -> None:
    key = report_key(b"\x03" * 32)
    result = sign_report(key, CommandResult(device_id="SPK-1", ts=1, command_id="c", name="x", status="failed"))
    tampered = json.loads(result.to_json())
    tampered["extra"] = "slipped in"
    with pytest.raises(SignatureError):
        verify_report(key, CommandResult.model_validate(tampered))


def test_the_report_key_is_not_the_secret() -> None:
    secret = b"\x04" * 32
    assert report_key(secret) != secret


def test_presence_names_its_session() -> None:
    presence = Presence(device_id="SPK-1", ts=1, online=False, reason="lost", session="abc_DEF-1")
    assert parse_payload(Presence, presence.to_json()).session == "abc_DEF-1"
    with pytest.raises(MessageError):
        parse_payload(Presence, presence.to_json().replace(b"abc_DEF-1", b"a b"))


def _State(sqlstate: str) -> psycopg.Error:  # noqa: N802 - reads as the error it makes
    """The error psycopg raises for a server refusal with `sqlstate`."""
    return psycopg.errors.lookup(sqlstate)(f"refused with {sqlstate}")


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_State("22P05"), False),  # untranslatable character (\u0000 in jsonb)
        (_State("22003"), False),  # numeric value out of range
        (_State("23505"), False),  # unique violation
        (_State("08006"), True),  # connection failure
        (_State("57P01"), True),  # admin shutdown
        (_State("53100"), True),  # disk full
        (_State("58030"), True),  # I/O error
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
        (psycopg.OperationalError("connection is lost"), True),
        (psycopg_pool.PoolTimeout("no connection"), True),
        (ValueError("a bug or a codec refusal"), False),
    ],
)
def test_outages_are_told_from_data_failures(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient
    assert describe(error)


class _Table:
    """A writer that refuses, for the data's sake, any batch holding a poison item; and is away
    (an outage) for its first `outages` calls."""

    def __init__(self, poison: set[int], outages: int = 0) -> None:
        self.poison = poison
        self.outages = outages
        self.rows: list[int] = []
        self.calls = 0

    async def write(self, items: Sequence[int]) -> None:
        self.calls += 1
        if self.outages:
            self.outages -= 1
            raise psycopg.OperationalError("server closed the connection")
        if self.poison & set(items):
            raise _State("22P05")
        self.rows.extend(items)


async def test_a_batch_is_written_apart_around_its_poison() -> None:
    table = _Table(poison={3, 77})
    poisoned = await write_apart(list(range(100)), table.write)
    assert sorted(item for item, _ in poisoned) == [3, 77]
    assert sorted(table.rows) == [i for i in range(100) if i not in (3, 77)]
    assert table.calls < 30  # about 2·log2(n) per poison item, not one write per item


async def test_an_outage_is_waited_out_and_the_same_part_tried_again() -> None:
    table = _Table(poison={5}, outages=3)
    waits: list[Exception] = []

    async def wait(exc: Exception) -> None:
        waits.append(exc)

    poisoned = await write_apart(list(range(10)), table.write, on_transient=wait)
    assert [item for item, _ in poisoned] == [5]
    assert len(waits) == 3
    assert sorted(table.rows) == [0, 1, 2, 3, 4, 6, 7, 8, 9]


async def test_without_a_wait_an_outage_is_raised_to_the_caller() -> None:
    with pytest.raises(psycopg.OperationalError):
        await write_apart([1, 2], _Table(poison=set(), outages=1).write)


def test_quarantine_text_is_storable() -> None:
    assert storable_text("a\x00b\ud800") == "a\\u0000b?"
    assert len(storable_text("x" * 5000)) == 1000


def test_a_registry_row_with_text_postgresql_cannot_hold_is_refused_by_name() -> None:
    from fleet_server.devices.importer import check_row, read_csv  # noqa: PLC0415 - one test of the importer

    header = "device_id,serial,merchant_id,merchant_name,store_id,city_id,district_id,model\n"
    for bad in ("a\x00b", "\ud800"):
        rows = read_csv(header + f'SPK1,S1,M1,"{bad}",S,C,D,HD\n')
        row, errors = check_row(*rows[0])
        assert row is None
        assert errors[0].startswith("merchant_name:")


def test_a_window_near_the_ends_of_the_calendar_is_a_clear_refusal() -> None:
    """The OpenAPI fuzzer once sent `end=0001-01-01`: the default start overflowed into a 500."""
    from datetime import UTC, datetime  # noqa: PLC0415

    from fleet_server.errors import ApiError  # noqa: PLC0415
    from fleet_server.http.params import window  # noqa: PLC0415

    for start, end in (
        (None, datetime(1, 1, 1, tzinfo=UTC)),
        (datetime(9999, 12, 31, tzinfo=UTC), None),
        (datetime(1999, 12, 31, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC)),
    ):
        with pytest.raises(ApiError) as refused:
            window(start, end)
        assert refused.value.status == 422
    start, end = window(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC))
    assert end > start
