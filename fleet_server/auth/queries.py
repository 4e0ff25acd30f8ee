"""The SQL of accounts, sessions and the audit log."""

from __future__ import annotations

from typing import Final

# An account with the stores it is assigned, over `users u`.
_USER_COLUMNS: Final = (
    "u.user_id, u.login, u.name, u.role, u.merchant_id, u.agent_id, u.disabled, u.created_at,"
    " COALESCE(ARRAY(SELECT store_id FROM user_stores s WHERE s.user_id = u.user_id ORDER BY store_id),"
    " '{}') AS stores"
)

# A new account, unless the login is taken: (user_id), or no row.
INSERT_USER: Final = (
    "INSERT INTO users (login, name, role, password_hash, merchant_id, agent_id)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (login) DO NOTHING RETURNING user_id"
)
# An account's stores, replaced: first all removed, then the new ones added.
CLEAR_STORES: Final = "DELETE FROM user_stores WHERE user_id = %s"
ADD_STORES: Final = "INSERT INTO user_stores (user_id, store_id) SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING"
# One account by login. Rows: User.
USER: Final = f"SELECT {_USER_COLUMNS} FROM users u WHERE u.login = %s"  # noqa: S608 - constant columns.
# Every account. Rows: User.
USERS: Final = f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.login"  # noqa: S608 - constant columns.
# A new password hash and/or disabled flag (NULL keeps the old): (hash, disabled, user_id).
UPDATE_USER: Final = (
    "UPDATE users SET password_hash = COALESCE(%s, password_hash), disabled = COALESCE(%s, disabled) WHERE user_id = %s"
)
# Every live session and token of an account ended.
END_SESSIONS: Final = "UPDATE sessions SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL"
# What a sign-in checks: (password_hash, disabled), none for an unknown or service account.
LOGIN: Final = "SELECT password_hash, disabled FROM users WHERE login = %s AND password_hash IS NOT NULL"
# A stronger hash of the same password: (hash, login).
REHASH: Final = "UPDATE users SET password_hash = %s WHERE login = %s"
# A new session or API token, by its digest.
INSERT_SESSION: Final = (
    "INSERT INTO sessions (token_sha256, user_id, kind, csrf, expires_at) VALUES (%s, %s, %s, %s, %s)"
)
# The live account behind a token digest, with the session's CSRF token. Rows: User + csrf.
RESOLVE: Final = (
    f"SELECT {_USER_COLUMNS}, s.csrf FROM sessions s JOIN users u USING (user_id)"  # noqa: S608 - constant columns.
    " WHERE s.token_sha256 = %s AND s.revoked_at IS NULL AND s.expires_at > now() AND NOT u.disabled"
)
# One token ended.
REVOKE_SESSION: Final = "UPDATE sessions SET revoked_at = now() WHERE token_sha256 = %s AND revoked_at IS NULL"
# One audit entry.
INSERT_AUDIT: Final = (
    "INSERT INTO audit_log (user_id, login, role, action, target, outcome, detail, client_ip)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
# Audit entries, newest first, by target and/or login (NULL matches all). Rows: AuditEntry.
AUDIT_LOG: Final = (
    "SELECT audit_id, at, login, role, action, target, outcome, detail, client_ip FROM audit_log"
    " WHERE (%(target)s::text IS NULL OR target = %(target)s)"
    " AND (%(login)s::text IS NULL OR login = %(login)s)"
    " ORDER BY audit_id DESC LIMIT %(limit)s"
)
