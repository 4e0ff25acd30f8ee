"""Bulk import of the registry from CSV: city → district → store → merchant → device.

One row per device, the hierarchy above it repeated on each row (what a spreadsheet export
gives). Every row is checked on its own and against the file and the database; the report
says, per row, what it would do or why it cannot. A dry run stops there; a real run applies the
good rows in one transaction and skips the bad ones, which the report lists.

Binding rules: a device has one merchant (a device bound to another merchant must be unbound
first, through the bindings API), and a serial number belongs to one device.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime, time
from operator import itemgetter
from typing import Final

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from firmware_protocols.fields import unstorable
from firmware_protocols.topics import DEVICE_ID_PATTERN
from fleet_server.contacts.cipher import FieldCipher
from fleet_server.devices import queries
from fleet_server.errors import ImportRefused

# The merchant's own ids on the payment platforms (WeChat Pay partner mode's sub_mchid, Alipay's
# seller_id, UnionPay's merId), by which a notification without our backend's field is routed to
# it; each belongs to one merchant.
PLATFORM_ID_COLUMNS: Final = ("wechat_sub_mchid", "alipay_seller_id", "unionpay_mer_id")
COLUMNS: Final = (
    "city_id",
    "city_name",
    "district_id",
    "district_name",
    "store_id",
    "store_name",
    "agent_id",
    "agent_name",
    "agent_phone",
    "merchant_id",
    "merchant_name",
    # Sensitive: stored only encrypted (fieldcrypt), the phones also as a keyed hash for lookups.
    "merchant_contact",
    "merchant_phone",
    "settlement_account",
    "business_open",
    "business_close",
    *PLATFORM_ID_COLUMNS,
    "device_id",
    "serial",
    "model",
    "installed_at",
    "install_address",
    "install_lat",
    "install_lon",
    "tags",  # for OTA targeting, separated by ';' (e.g. pilot;night-shop); empty keeps the device's
)
REQUIRED: Final = ("city_id", "district_id", "store_id", "merchant_id", "device_id", "serial", "model")
_ID: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_PLATFORM_ID: Final = re.compile(r"^[A-Za-z0-9]{1,32}$")
MAX_ROWS: Final = 200_000


class RowReport(BaseModel):
    line: int
    device_id: str | None
    errors: list[str]


class ImportReport(BaseModel):
    dry_run: bool
    rows: int
    valid: int
    invalid: int
    applied: int
    creates: int  # devices new to the registry (the device may have been seen before)
    updates: int
    problems: list[RowReport]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    line: int
    values: dict[str, str]
    installed_at: datetime | None
    business_open: time
    business_close: time
    lat: float | None
    lon: float | None


def _time(value: str, default: str) -> time:
    return time.fromisoformat(value or default)


def _coordinate(value: str, limit: float, name: str, errors: list[str]) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        errors.append(f"{name} {value!r} is not a number")
        return None
    if not -limit <= number <= limit:
        errors.append(f"{name} {number} is outside ±{limit}")
        return None
    return number


def tags_of(values: dict[str, str]) -> list[str]:
    return [t.strip() for t in (values.get("tags") or "").split(";") if t.strip()]


def check_row(line: int, values: dict[str, str]) -> tuple[DeviceRow | None, list[str]]:
    """Check one row on its own."""
    errors = [f"{name} is required" for name in REQUIRED if not values.get(name)]
    # What PostgreSQL text cannot hold is refused here, by name, not by the database mid-import.
    errors.extend(problem for name, value in values.items() if (problem := unstorable(value, name)) is not None)
    errors.extend(
        f"{name} {values[name]!r} may only hold letters, digits, '_', '.', '-' (1-64)"
        for name in ("city_id", "district_id", "store_id", "merchant_id", "agent_id", "serial")
        if values.get(name) and not _ID.match(values[name])
    )
    errors.extend(
        f"tag {tag!r} may only hold letters, digits, '_', '.', '-' (1-64)"
        for tag in tags_of(values)
        if not _ID.match(tag)
    )
    errors.extend(
        f"{name} {values[name]!r} may only hold digits and letters (1-32)"
        for name in PLATFORM_ID_COLUMNS
        if values.get(name) and not _PLATFORM_ID.match(values[name])
    )
    if values.get("device_id") and not DEVICE_ID_PATTERN.match(values["device_id"]):
        errors.append(f"device_id {values['device_id']!r} is not a valid device id")
    installed_at = None
    if values.get("installed_at"):
        try:
            installed_at = datetime.fromisoformat(values["installed_at"])
            if installed_at.tzinfo is None:
                installed_at = installed_at.replace(tzinfo=UTC)
        except ValueError:
            errors.append(f"installed_at {values['installed_at']!r} is not an ISO date or date-time")
    try:
        opens = _time(values.get("business_open", ""), "08:00")
        closes = _time(values.get("business_close", ""), "22:00")
    except ValueError:
        errors.append("business_open/business_close must be HH:MM")
        opens, closes = time(8), time(22)
    lat = _coordinate(values.get("install_lat", ""), 90, "install_lat", errors)
    lon = _coordinate(values.get("install_lon", ""), 180, "install_lon", errors)
    if (lat is None) != (lon is None) and not errors:
        errors.append("install_lat and install_lon go together")
    if errors:
        return None, errors
    return DeviceRow(line, values, installed_at, opens, closes, lat, lon), []


def read_csv(text: str) -> list[tuple[int, dict[str, str]]]:
    """The rows of a registry CSV by line number; `ImportRefused` for a file that is not one."""
    return read_table(text, COLUMNS, REQUIRED)


def read_table(text: str, known: tuple[str, ...], required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV file with the columns `known` (`required` among them) by line number;
    `ImportRefused` for a file that is not one. Excel's UTF-8 byte order mark is dropped."""
    # newline="": the csv module's own line handling, so a CR inside a quoted field is data
    # and a stray one elsewhere is a clear error, not a crash (found by the OpenAPI fuzzing).
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    try:
        return _read_rows(reader, known, required)
    except csv.Error as exc:
        raise ImportRefused(f"not a CSV file (line {reader.line_num}): {exc}") from exc


def _read_rows(
    reader: csv.DictReader[str], known: tuple[str, ...], required: tuple[str, ...]
) -> list[tuple[int, dict[str, str]]]:
    header = reader.fieldnames or []
    missing = [name for name in required if name not in header]
    if missing:
        raise ImportRefused(f"the CSV header lacks {', '.join(missing)}; expected columns: {', '.join(known)}")
    unknown = [name for name in header if name not in known]
    if unknown:
        raise ImportRefused(f"unknown columns {', '.join(unknown)}; expected: {', '.join(known)}")
    rows: list[tuple[int, dict[str, str]]] = []
    for values in reader:
        if len(rows) >= MAX_ROWS:
            raise ImportRefused(f"more than {MAX_ROWS} rows: split the file")
        rows.append((reader.line_num, {k: (v or "").strip() for k, v in values.items() if k is not None}))
    return rows


SENSITIVE: Final = ("agent_phone", "merchant_contact", "merchant_phone", "settlement_account")


def _check_sealable(rows: list[tuple[int, dict[str, str]]], cipher: FieldCipher | None) -> None:
    if cipher is None and any(values.get(c) for _, values in rows for c in SENSITIVE):
        raise ImportRefused(f"the columns {', '.join(SENSITIVE)} are stored encrypted: the server needs its field keys")


async def import_registry(
    pool: AsyncConnectionPool, text: str, *, dry_run: bool, cipher: FieldCipher | None = None
) -> ImportReport:
    """Check (and unless `dry_run`, apply) a registry CSV; sensitive columns need `cipher`."""
    rows = read_csv(text)
    _check_sealable(rows, cipher)
    good, problems = _check_file(rows)
    async with pool.connection() as conn, conn.cursor() as cur:
        ids = [r.values["device_id"] for r in good]
        await cur.execute(queries.SERIAL_OWNERS, ([r.values["serial"] for r in good],))
        serial_owner = {serial: device for device, serial in await cur.fetchall()}
        await cur.execute(queries.BOUND_MERCHANTS, (ids,))
        bound: dict[str, str] = dict(await cur.fetchall())
        await cur.execute(queries.EXISTING_DEVICES, (ids,))
        existing = {row[0] for row in await cur.fetchall()}
        given = {c: sorted({r.values[c] for r in good if r.values.get(c)}) for c in PLATFORM_ID_COLUMNS}
        await cur.execute(queries.PLATFORM_ID_OWNERS, given)
        platform_owner = {(column, value): merchant for column, value, merchant in await cur.fetchall()}
    applicable: list[DeviceRow] = []
    for row in good:
        v = row.values
        errors = []
        owner = serial_owner.get(v["serial"])
        if owner is not None and owner != v["device_id"]:
            errors.append(f"serial {v['serial']} already belongs to device {owner}")
        errors.extend(
            f"{column} {v[column]} already belongs to merchant {holder}"
            for column in PLATFORM_ID_COLUMNS
            if (holder := platform_owner.get((column, v.get(column, "")))) not in (None, v["merchant_id"])
        )
        merchant = bound.get(v["device_id"])
        if merchant is not None and merchant != v["merchant_id"]:
            errors.append(
                f"device {v['device_id']} is bound to merchant {merchant}; unbind it before binding it to"
                f" {v['merchant_id']} (one merchant per device)"
            )
        if errors:
            problems.append(RowReport(line=row.line, device_id=v["device_id"], errors=errors))
        else:
            applicable.append(row)
    if not dry_run and applicable:
        await _apply(pool, applicable, cipher)
    problems.sort(key=lambda p: p.line)
    return ImportReport(
        dry_run=dry_run,
        rows=len(rows),
        valid=len(applicable),
        invalid=len(rows) - len(applicable),
        applied=0 if dry_run else len(applicable),
        creates=sum(r.values["device_id"] not in existing for r in applicable),
        updates=sum(r.values["device_id"] in existing for r in applicable),
        problems=problems,
    )


def _check_file(rows: list[tuple[int, dict[str, str]]]) -> tuple[list[DeviceRow], list[RowReport]]:
    """Each row on its own and against the rest of the file: a device, a serial or a platform id
    given twice."""
    problems: list[RowReport] = []
    good: list[DeviceRow] = []
    serials: dict[str, str] = {}
    platform_ids: dict[tuple[str, str], str] = {}  # (column, id) -> the merchant it is given to
    devices_in_file: dict[str, int] = {}
    for line, values in rows:
        row, errors = check_row(line, values)
        device_id = values.get("device_id") or None
        if device_id in devices_in_file:
            errors.append(f"device {device_id} is already on line {devices_in_file[device_id]}")
        elif device_id:
            devices_in_file[device_id] = line
        serial = values.get("serial")
        if serial and serials.setdefault(serial, device_id or "") != (device_id or ""):
            errors.append(f"serial {serial} is also given to device {serials[serial]} in this file")
        merchant_id = values.get("merchant_id", "")
        errors.extend(
            f"{column} {values[column]} is also given to merchant {platform_ids[column, values[column]]} in this file"
            for column in PLATFORM_ID_COLUMNS
            if values.get(column) and platform_ids.setdefault((column, values[column]), merchant_id) != merchant_id
        )
        if errors or row is None:
            problems.append(RowReport(line=line, device_id=device_id, errors=errors))
        else:
            good.append(row)
    return good, problems


def _sealed(cipher: FieldCipher | None, value: str | None, context: str) -> str | None:
    return None if not value or cipher is None else cipher.encrypt(value, context=context)


def _phone_hash(cipher: FieldCipher | None, value: str | None) -> bytes | None:
    return None if not value or cipher is None else cipher.lookup_hash(value, kind="phone")


async def _apply(pool: AsyncConnectionPool, rows: list[DeviceRow], cipher: FieldCipher | None) -> None:
    def named(row: DeviceRow, key: str, fallback: str) -> str:
        return row.values.get(key) or row.values[fallback]

    async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            queries.UPSERT_CITY,
            sorted({(r.values["city_id"], named(r, "city_name", "city_id")) for r in rows}),
        )
        await cur.executemany(
            queries.UPSERT_DISTRICT,
            sorted(
                {(r.values["district_id"], r.values["city_id"], named(r, "district_name", "district_id")) for r in rows}
            ),
        )
        agents = {r.values["agent_id"]: r for r in rows if r.values.get("agent_id")}
        await cur.executemany(
            queries.UPSERT_AGENT,
            [
                (
                    agent_id,
                    named(r, "agent_name", "agent_id"),
                    _sealed(cipher, r.values.get("agent_phone"), f"field_agents.phone:{agent_id}"),
                    _phone_hash(cipher, r.values.get("agent_phone")),
                )
                for agent_id, r in sorted(agents.items())
            ],
        )
        await cur.executemany(
            queries.UPSERT_STORE,
            sorted(
                {
                    (
                        r.values["store_id"],
                        r.values["district_id"],
                        named(r, "store_name", "store_id"),
                        r.values.get("agent_id") or None,
                    )
                    for r in rows
                },
                key=itemgetter(0),
            ),
        )
        merchants = {r.values["merchant_id"]: r for r in rows}
        await cur.executemany(
            queries.UPSERT_MERCHANT,
            [
                (
                    merchant_id,
                    r.values["store_id"],
                    named(r, "merchant_name", "merchant_id"),
                    r.business_open,
                    r.business_close,
                    _sealed(cipher, r.values.get("merchant_contact"), f"merchants.contact_name:{merchant_id}"),
                    _sealed(cipher, r.values.get("merchant_phone"), f"merchants.phone:{merchant_id}"),
                    _phone_hash(cipher, r.values.get("merchant_phone")),
                    _sealed(cipher, r.values.get("settlement_account"), f"merchants.settlement_account:{merchant_id}"),
                    *(r.values.get(column) or None for column in PLATFORM_ID_COLUMNS),
                )
                for merchant_id, r in sorted(merchants.items())
            ],
        )
        await cur.executemany(
            queries.UPSERT_DEVICE,
            sorted(
                (
                    r.values["device_id"],
                    r.values["serial"],
                    r.values["model"],
                    r.values["store_id"],
                    r.values.get("agent_id") or None,
                    r.installed_at,
                    r.values.get("install_address") or None,
                    r.lat,
                    r.lon,
                    tags_of(r.values) or None,
                    tags_of(r.values) or None,
                )
                for r in rows
            ),
        )
        await cur.executemany(
            queries.BIND_NEW,
            sorted((r.values["device_id"], r.values["merchant_id"]) for r in rows),
        )
