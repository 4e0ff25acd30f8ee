"""Merchants' and field agents' contact details, kept encrypted (fieldcrypt) and read back here.

The API shows them masked (138****8000); only an operations admin asks for the clear values,
and that request is audited. Lookups by phone go through the keyed hash, never a scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.contacts import queries
from fleet_server.contacts.cipher import FieldCipher, mask
from fleet_server.db.fetch import execute, fetch_rows

log = structlog.get_logger(__name__)

# (table, key column, sealed column, context column name) of every encrypted field.
SEALED_FIELDS = (
    ("merchants", "merchant_id", "contact_name_enc", "merchants.contact_name"),
    ("merchants", "merchant_id", "phone_enc", "merchants.phone"),
    ("merchants", "merchant_id", "settlement_account_enc", "merchants.settlement_account"),
    ("field_agents", "agent_id", "phone_enc", "field_agents.phone"),
)


class MerchantContact(BaseModel):
    merchant_id: str
    name: str
    store_id: str
    contact_name: str | None
    phone: str | None
    settlement_account: str | None
    # The merchant's ids on the payment platforms (not secret: they are on every receipt).
    wechat_sub_mchid: str | None = None
    alipay_seller_id: str | None = None
    unionpay_mer_id: str | None = None


@dataclass(frozen=True, slots=True)
class Contacts:
    pool: AsyncConnectionPool
    cipher: FieldCipher

    def _open(self, envelope: str | None, context: str) -> str | None:
        return None if envelope is None else self.cipher.decrypt(envelope, context=context)

    async def merchants(self, *, merchant_id: str | None = None, phone: str | None = None) -> list[MerchantContact]:
        """Merchants by id or by phone (through the keyed hash), with their details decrypted."""
        if phone is not None:
            rows = await fetch_rows(
                self.pool, queries.MERCHANTS_BY_PHONE, (self.cipher.lookup_hash(phone, kind="phone"),)
            )
        else:
            rows = await fetch_rows(self.pool, queries.MERCHANT_BY_ID, (merchant_id,))
        return [
            MerchantContact(
                merchant_id=m,
                name=name,
                store_id=store,
                contact_name=self._open(contact, f"merchants.contact_name:{m}"),
                phone=self._open(phone_enc, f"merchants.phone:{m}"),
                settlement_account=self._open(account, f"merchants.settlement_account:{m}"),
                wechat_sub_mchid=wechat,
                alipay_seller_id=alipay,
                unionpay_mer_id=unionpay,
            )
            for m, name, store, contact, phone_enc, account, wechat, alipay, unionpay in rows
        ]

    async def rewrap(self) -> int:
        """Re-seal every envelope not under the active key; the count re-sealed."""
        done = 0
        for table, key, column, context in SEALED_FIELDS:
            async with self.pool.connection() as conn, conn.transaction():
                rows = await fetch_rows(
                    conn, queries.not_under_key(table, key, column), (f"{self.cipher.active_key_id}:%",)
                )
                for row_key, envelope in rows:
                    clear = self.cipher.decrypt(envelope, context=f"{context}:{row_key}")
                    sealed = self.cipher.encrypt(clear, context=f"{context}:{row_key}")
                    await execute(conn, queries.reseal(table, key, column), (sealed, row_key))
                done += len(rows)
        log.info("field envelopes re-sealed", count=done, active_key=self.cipher.active_key_id)
        return done

    async def seal_legacy(self) -> int:
        """Encrypt field agents' phones stored in clear before encryption existed, and clear them."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await fetch_rows(conn, queries.LEGACY_PHONES)
            for agent_id, phone in rows:
                await execute(
                    conn,
                    queries.SEAL_LEGACY_PHONE,
                    (
                        self.cipher.encrypt(phone, context=f"field_agents.phone:{agent_id}"),
                        self.cipher.lookup_hash(phone, kind="phone"),
                        agent_id,
                    ),
                )
        if rows:
            log.info("field agents' clear phones encrypted", count=len(rows))
        return len(rows)


def masked(contact: MerchantContact) -> MerchantContact:
    """The contact as pages show it."""
    return contact.model_copy(
        update={
            "phone": mask(contact.phone, "phone") if contact.phone else None,
            "settlement_account": mask(contact.settlement_account, "account") if contact.settlement_account else None,
            "contact_name": mask(contact.contact_name, "name") if contact.contact_name else None,
        }
    )
