"""The SQL of contact details: merchants read back by id or by the keyed hash of their phone,
every sealed field re-sealed under the active key, field agents' clear phones from before."""

from __future__ import annotations

from typing import Final

from psycopg import sql

_MERCHANT: Final = (
    "SELECT merchant_id, name, store_id, contact_name_enc, phone_enc, settlement_account_enc, wechat_sub_mchid,"
    " alipay_seller_id, unionpay_mer_id FROM merchants"
)
# Merchants by the keyed hash of their phone (at most 50): (merchant_id, name, store_id,
# contact_name_enc, phone_enc, settlement_account_enc).
MERCHANTS_BY_PHONE: Final = _MERCHANT + " WHERE phone_hash = %s ORDER BY merchant_id LIMIT 50"
# One merchant, the same columns.
MERCHANT_BY_ID: Final = _MERCHANT + " WHERE merchant_id = %s"

# Field agents' phones kept in clear before encryption existed, locked: (agent_id, phone).
LEGACY_PHONES: Final = (
    "SELECT agent_id, phone_plaintext_legacy FROM field_agents WHERE phone_plaintext_legacy IS NOT NULL FOR UPDATE"
)
# One of them sealed and hashed, and the clear copy gone: (phone_enc, phone_hash, agent_id).
SEAL_LEGACY_PHONE: Final = (
    "UPDATE field_agents SET phone_enc = %s, phone_hash = %s, phone_plaintext_legacy = NULL WHERE agent_id = %s"
)


def not_under_key(table: str, key: str, column: str) -> sql.Composed:
    """The envelopes of `table.column` not sealed under a key (its `'<key id>:%'` prefix is the
    parameter), locked: (row key, envelope)."""
    return sql.SQL(
        "SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE %s FOR UPDATE"
    ).format(key=sql.Identifier(key), column=sql.Identifier(column), table=sql.Identifier(table))


def reseal(table: str, key: str, column: str) -> sql.Composed:
    """One envelope of `table.column` replaced: (envelope, row key)."""
    return sql.SQL("UPDATE {table} SET {column} = %s WHERE {key} = %s").format(
        key=sql.Identifier(key), column=sql.Identifier(column), table=sql.Identifier(table)
    )
