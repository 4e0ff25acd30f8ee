"""Accounts, sessions and the audit log, in PostgreSQL.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile);
a hash made with older parameters is rehashed at the next good login. Sessions and API tokens
are random 256-bit tokens of which only the SHA-256 is stored, so a copy of the database does
not sign anybody in. A failed login costs the same time whether the login exists or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from fleet_server.auth import queries
from fleet_server.auth.roles import Principal, Role
from fleet_server.db.fetch import execute, fetch_dicts, fetch_model, fetch_models, fetch_row
from fleet_server.errors import AuthError

log = structlog.get_logger(__name__)

SESSION_TTL: Final = timedelta(hours=12)  # a working day and then some; the page asks again after
MIN_PASSWORD_LENGTH: Final = 10
TOKEN_PREFIX: Final = "hd_"  # noqa: S105 - a marker in front of random tokens, not a secret.
_HASHER: Final = PasswordHasher()
# Verified against when the login is unknown, so that a wrong login and a wrong password take
# the same time and say the same thing.
_DUMMY_HASH: Final = _HASHER.hash(secrets.token_urlsafe(16))


class User(BaseModel):
    user_id: int
    login: str
    name: str
    role: Role
    merchant_id: str | None
    agent_id: str | None
    stores: list[str]
    disabled: bool
    created_at: datetime


class AuditEntry(BaseModel):
    audit_id: int
    at: datetime
    login: str
    role: str
    action: str
    target: str
    outcome: str
    detail: dict[str, Any]
    client_ip: str | None


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    csrf: str
    expires_at: datetime
    principal: Principal


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(
            "WEAK_PASSWORD",
            f"passwords are at least {MIN_PASSWORD_LENGTH} characters",
            f"密码至少 {MIN_PASSWORD_LENGTH} 位",
        )


class AuthStore:
    def __init__(self, pool: AsyncConnectionPool, *, session_ttl: timedelta = SESSION_TTL) -> None:
        self._pool = pool
        self._session_ttl = session_ttl

    # -- accounts ---------------------------------------------------------------------------

    async def create_user(
        self,
        login: str,
        *,
        role: Role,
        name: str = "",
        password: str | None = None,
        merchant_id: str | None = None,
        agent_id: str | None = None,
        stores: list[str] | None = None,
    ) -> User:
        """A new account; `password` None makes a service account that only holds API tokens."""
        if role is Role.MERCHANT and not merchant_id:
            raise AuthError("MERCHANT_NEEDED", "a merchant account names its merchant", "商户账号需要指定商户编号")
        if role is Role.FIELD_AGENT and not stores:
            raise AuthError("STORES_NEEDED", "a field agent account names its stores", "经纪人账号需要指定负责的门店")
        password_hash = None
        if password is not None:
            check_password_strength(password)
            password_hash = await asyncio.to_thread(_HASHER.hash, password)
        async with self._pool.connection() as conn, conn.transaction():
            row = await fetch_row(
                conn, queries.INSERT_USER, (login, name or login, role.value, password_hash, merchant_id, agent_id)
            )
            if row is None:
                raise AuthError("LOGIN_TAKEN", f"login {login!r} is taken", f"登录名 {login} 已被占用")
            await self._set_stores(conn, row[0], stores or [])
        return await self.user(login)

    async def _set_stores(self, conn: Any, user_id: int, stores: list[str]) -> None:
        await execute(conn, queries.CLEAR_STORES, (user_id,))
        if stores:
            await execute(conn, queries.ADD_STORES, (user_id, stores))

    async def user(self, login: str) -> User:
        user = await fetch_model(self._pool, User, queries.USER, (login,))
        if user is None:
            raise AuthError("USER_NOT_FOUND", f"no account {login!r}", f"账号 {login} 不存在")
        return user

    async def users(self) -> list[User]:
        return await fetch_models(self._pool, User, queries.USERS)

    async def update_user(
        self,
        login: str,
        *,
        password: str | None = None,
        disabled: bool | None = None,
        stores: list[str] | None = None,
    ) -> User:
        """Change a password, disable or enable, or reassign stores; disabling or a new password
        ends the account's sessions and tokens."""
        user = await self.user(login)
        password_hash = None
        if password is not None:
            check_password_strength(password)
            password_hash = await asyncio.to_thread(_HASHER.hash, password)
        async with self._pool.connection() as conn, conn.transaction():
            await execute(conn, queries.UPDATE_USER, (password_hash, disabled, user.user_id))
            if stores is not None:
                await self._set_stores(conn, user.user_id, stores)
            if password is not None or disabled:
                await execute(conn, queries.END_SESSIONS, (user.user_id,))
        return await self.user(login)

    # -- signing in -------------------------------------------------------------------------

    async def login(self, login: str, password: str) -> IssuedToken:
        """A browser session for a good login and password; `AuthError` BAD_LOGIN otherwise."""
        row = await fetch_row(self._pool, queries.LOGIN, (login,))
        stored, disabled = row if row is not None else (_DUMMY_HASH, True)
        try:
            await asyncio.to_thread(_HASHER.verify, stored, password)
            good = row is not None and not disabled
        except (VerificationError, InvalidHashError):
            good = False
        if not good:
            raise AuthError("BAD_LOGIN", "wrong login or password", "账号或密码错误")
        if _HASHER.check_needs_rehash(stored):
            new_hash = await asyncio.to_thread(_HASHER.hash, password)
            await execute(self._pool, queries.REHASH, (new_hash, login))
        return await self.issue(login, kind="session")

    async def issue(self, login: str, *, kind: str = "api", ttl: timedelta | None = None) -> IssuedToken:
        """A new token for `login`: a session (the pages) or an API token (CLI, scripts, backend)."""
        user = await self.user(login)
        if user.disabled:
            raise AuthError("USER_DISABLED", f"account {login!r} is disabled", f"账号 {login} 已停用")
        # The prefix marks our tokens for secret scanners, and keeps a token from starting with
        # "-": one in 64 bare tokens did, and `--token <it>` then read as an option (found when
        # the OTA CLI test failed on such a token, issue 10).
        token, csrf = TOKEN_PREFIX + secrets.token_urlsafe(32), secrets.token_urlsafe(16)
        expires_at = datetime.now(tz=UTC) + (ttl or self._session_ttl)
        await execute(self._pool, queries.INSERT_SESSION, (token_digest(token), user.user_id, kind, csrf, expires_at))
        return IssuedToken(token, csrf, expires_at, _principal(user, csrf))

    async def service_token(self, login: str, role: Role, **fields: Any) -> str:
        """An API token for an in-process caller (the demo, the simulators), creating its
        service account on first use."""
        try:
            await self.user(login)
        except AuthError:
            await self.create_user(login, role=role, **fields)
        return (await self.issue(login)).token

    async def resolve(self, token: str) -> Principal | None:
        """The principal a token stands for, or None if unknown, expired, revoked or disabled."""
        rows = await fetch_dicts(self._pool, queries.RESOLVE, (token_digest(token),))
        if not rows:
            return None
        return _principal(User.model_validate(rows[0]), rows[0]["csrf"])

    async def revoke(self, token: str) -> None:
        await execute(self._pool, queries.REVOKE_SESSION, (token_digest(token),))

    # -- audit ------------------------------------------------------------------------------

    async def audit(
        self,
        principal: Principal | None,
        action: str,
        target: str,
        *,
        outcome: str = "ok",
        detail: dict[str, Any] | None = None,
        client_ip: str | None = None,
        login: str | None = None,
    ) -> None:
        await execute(
            self._pool,
            queries.INSERT_AUDIT,
            (
                principal.user_id if principal else None,
                principal.login if principal else (login or "-"),
                principal.role.value if principal else "-",
                action,
                target,
                outcome,
                json.dumps(detail or {}, ensure_ascii=False, default=str),
                client_ip,
            ),
        )
        log.info("audit", action=action, target=target, outcome=outcome, login=principal.login if principal else login)

    async def audit_log(
        self, *, limit: int = 200, target: str | None = None, login: str | None = None
    ) -> list[AuditEntry]:
        params = {"target": target, "login": login, "limit": limit}
        return await fetch_models(self._pool, AuditEntry, queries.AUDIT_LOG, params)


def _principal(user: User, csrf: str) -> Principal:
    return Principal(
        user_id=user.user_id,
        login=user.login,
        name=user.name,
        role=user.role,
        merchant_id=user.merchant_id,
        agent_id=user.agent_id,
        stores=frozenset(user.stores),
        csrf=csrf,
    )
