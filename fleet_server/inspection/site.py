"""What a field agent needs in front of the device: whose it is (the merchant's name, the
contact's name and phone masked, the clear phone only on a tap to call, audited), where it
was installed (a map link), and the notes on the task.

The map link is 高德's URI API (`uri.amap.com/marker`), which phones in China open in the
高德 app or its web map; the registered position is WGS-84 as devices and phones report it, and
`coordinate=wgs84` tells 高德 so (its own maps are GCJ-02).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final
from urllib.parse import quote

from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, StringConstraints

from fleet_server.contacts.cipher import mask
from fleet_server.contacts.contacts import Contacts
from fleet_server.db.fetch import execute, fetch_models, fetch_row
from fleet_server.db.hierarchy import DEVICE_HIERARCHY

# The task's device, its merchant now and where it was installed: (task_id). One row.
SITE: Final = (
    "SELECT t.task_id, t.device_id, b.merchant_id, m.name, d.install_address, d.install_lat, d.install_lon"  # noqa: S608
    f" FROM tasks t JOIN ({DEVICE_HIERARCHY}) ON d.device_id = t.device_id WHERE t.task_id = %s"
)
NOTES: Final = "SELECT note_id, at, login, text FROM task_notes WHERE task_id = %s ORDER BY note_id"
ADD_NOTE: Final = "INSERT INTO task_notes (task_id, at, login, text) VALUES (%s, %s, %s, %s)"

NoteText = Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]


class Note(BaseModel):
    note_id: int
    at: datetime
    login: str
    text: str


class Site(BaseModel):
    task_id: int
    device_id: str
    merchant_id: str | None
    merchant_name: str | None
    contact_name: str | None  # masked: 王**
    phone: str | None  # masked: 138****8000 (the clear one: POST .../call)
    can_call: bool
    install_address: str | None
    install_lat: float | None
    install_lon: float | None
    map_url: str | None
    notes: list[Note]


def map_url(lat: float | None, lon: float | None, name: str) -> str | None:
    if lat is None or lon is None:
        return None
    return f"https://uri.amap.com/marker?position={lon:.6f},{lat:.6f}&name={quote(name)}&coordinate=wgs84&callnative=1"


class SiteBook:
    def __init__(self, pool: AsyncConnectionPool, contacts: Contacts) -> None:
        self._pool = pool
        self._contacts = contacts

    async def site(self, task_id: int) -> Site | None:
        row = await fetch_row(self._pool, SITE, (task_id,))
        if row is None:
            return None
        _, device, merchant_id, merchant_name, address, lat, lon = row
        contact = (await self._contacts.merchants(merchant_id=merchant_id))[:1] if merchant_id else []
        phone = contact[0].phone if contact else None
        name = contact[0].contact_name if contact else None
        return Site(
            task_id=task_id,
            device_id=device,
            merchant_id=merchant_id,
            merchant_name=merchant_name,
            contact_name=mask(name, "name") if name else None,
            phone=mask(phone, "phone") if phone else None,
            can_call=phone is not None,
            install_address=address,
            install_lat=lat,
            install_lon=lon,
            map_url=map_url(lat, lon, merchant_name or device),
            notes=await fetch_models(self._pool, Note, NOTES, (task_id,)),
        )

    async def phone(self, task_id: int) -> str | None:
        """The merchant's clear phone for a call (the caller audits it)."""
        row = await fetch_row(self._pool, SITE, (task_id,))
        if row is None or row[2] is None:
            return None
        found = await self._contacts.merchants(merchant_id=row[2])
        return found[0].phone if found else None

    async def note(self, task_id: int, text: str, *, by: str, now: datetime) -> None:
        await execute(self._pool, ADD_NOTE, (task_id, now, by, text))
