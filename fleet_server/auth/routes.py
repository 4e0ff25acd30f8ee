"""Signing in and out, who am I, accounts and API tokens, and the audit log (`/api/v1/auth`,
`/api/v1/users`, `/api/v1/audit`).

The pages sign in with a session cookie (HttpOnly, SameSite=Strict, Secure behind HTTPS);
the CLI and scripts ask for `"mode": "token"` and send it as `Authorization: Bearer ...`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fleet_server.auth.deps import (
    AUTH_ERRORS,
    SESSION_COOKIE,
    AuditDep,
    AuditReader,
    AuthDep,
    PrincipalDep,
    UsersAdmin,
    presented_token,
)
from fleet_server.auth.roles import COMMANDS_OF, ROLE_NAMES_ZH, ROLE_PERMISSIONS, Principal, Role
from fleet_server.auth.store import AuditEntry, User
from fleet_server.errors import AuthError
from fleet_server.http.errors import ErrorResponse
from fleet_server.http.ratelimit import too_many
from fleet_server.http.services import HttpPolicyDep

router = APIRouter(prefix="/api/v1", tags=["auth"], responses=AUTH_ERRORS)

Login = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


class LoginBody(BaseModel):
    login: Login
    password: str = Field(min_length=1, max_length=256)
    mode: Literal["cookie", "token"] = "cookie"


class Me(BaseModel):
    login: str
    name: str
    role: Role
    role_zh: str
    merchant_id: str | None
    agent_id: str | None
    stores: list[str]
    permissions: list[str]
    commands: list[str]
    csrf: str


class LoginAnswer(BaseModel):
    me: Me
    expires_at: datetime
    token: str | None = None  # only when asked for with mode "token"


def _me(principal: Principal) -> Me:
    return Me(
        login=principal.login,
        name=principal.name,
        role=principal.role,
        role_zh=ROLE_NAMES_ZH[principal.role],
        merchant_id=principal.merchant_id,
        agent_id=principal.agent_id,
        stores=sorted(principal.stores),
        permissions=sorted(ROLE_PERMISSIONS[principal.role]),
        commands=sorted(COMMANDS_OF.get(principal.role, frozenset())),
        csrf=principal.csrf,
    )


@router.post(
    "/auth/login",
    summary="Sign in with a login and password: a session cookie, or a token",
    response_model=LoginAnswer,
    responses={429: {"model": ErrorResponse, "description": "Too many attempts; see Retry-After"}},
)
async def login(
    body: LoginBody, request: Request, response: Response, store: AuthDep, audit: AuditDep, policy: HttpPolicyDep
) -> LoginAnswer | JSONResponse:
    # Per address and per login: one guesser, and many guessers at one account, both slow down.
    limiter = policy.login_limiter
    client = request.client.host if request.client else "-"
    for key in (f"ip:{client}", f"login:{body.login}"):
        if (refused := too_many(limiter, key, "sign-in attempts", "登录尝试")) is not None:
            return refused
    try:
        issued = await store.login(body.login, body.password)
    except AuthError:
        # Refused all the same (the one error handler answers it); the attempt is on record.
        await audit(None, "auth.login_failed", body.login, outcome="denied", login=body.login)
        raise
    await audit(issued.principal, "auth.login", body.login, detail={"mode": body.mode})
    if body.mode == "token":
        return LoginAnswer(me=_me(issued.principal), expires_at=issued.expires_at, token=issued.token)
    response.set_cookie(
        SESSION_COOKIE,
        issued.token,
        expires=issued.expires_at,
        httponly=True,
        samesite="strict",
        secure=policy.cookie_secure,
        path="/",
    )
    return LoginAnswer(me=_me(issued.principal), expires_at=issued.expires_at)


@router.post("/auth/logout", summary="End this session or token", status_code=204)
async def logout(
    principal: PrincipalDep, request: Request, response: Response, store: AuthDep, audit: AuditDep
) -> Response:
    await store.revoke(presented_token(request)[0])
    await audit(principal, "auth.logout", principal.login)
    response.status_code = 204
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/auth/me", summary="Who is signed in, their role, reach and the page's CSRF token")
async def me(principal: PrincipalDep) -> Me:
    return _me(principal)


class NewUser(BaseModel):
    login: Login
    role: Role
    name: str = Field(default="", max_length=100)
    password: str | None = Field(default=None, min_length=1, max_length=256)
    merchant_id: str | None = Field(default=None, max_length=64)
    agent_id: str | None = Field(default=None, max_length=64)
    stores: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=1000)


class UserChange(BaseModel):
    password: str | None = Field(default=None, min_length=1, max_length=256)
    disabled: bool | None = None
    stores: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(default=None, max_length=1000)


class TokenAsk(BaseModel):
    days: int = Field(default=90, ge=1, le=366)


class TokenAnswer(BaseModel):
    login: str
    token: str
    expires_at: datetime


LoginPath = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")]


@router.get("/users", summary="Accounts", tags=["users"])
async def list_users(_: UsersAdmin, store: AuthDep) -> list[User]:
    return await store.users()


@router.post("/users", summary="Create an account", status_code=201, tags=["users"])
async def create_user(principal: UsersAdmin, body: NewUser, store: AuthDep, audit: AuditDep) -> User:
    user = await store.create_user(
        body.login,
        role=body.role,
        name=body.name,
        password=body.password,
        merchant_id=body.merchant_id,
        agent_id=body.agent_id,
        stores=body.stores,
    )
    detail = body.model_dump(exclude={"password"})
    await audit(principal, "user.create", body.login, detail=detail)
    return user


@router.patch("/users/{login}", summary="Change a password, disable, or reassign stores", tags=["users"])
async def change_user(
    principal: UsersAdmin, login: LoginPath, body: UserChange, store: AuthDep, audit: AuditDep
) -> User:
    user = await store.update_user(login, password=body.password, disabled=body.disabled, stores=body.stores)
    detail = body.model_dump(exclude={"password"}, exclude_none=True) | {"password_changed": body.password is not None}
    await audit(principal, "user.change", login, detail=detail)
    return user


@router.post("/users/{login}/tokens", summary="Issue an API token for an account", status_code=201, tags=["users"])
async def issue_token(
    principal: UsersAdmin, login: LoginPath, body: TokenAsk, store: AuthDep, audit: AuditDep
) -> TokenAnswer:
    issued = await store.issue(login, ttl=timedelta(days=body.days))
    await audit(principal, "user.token", login, detail={"days": body.days})
    return TokenAnswer(login=login, token=issued.token, expires_at=issued.expires_at)


@router.get("/audit", summary="The audit log, newest first", tags=["users"])
async def audit_log(
    _: AuditReader,
    store: AuthDep,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
    target: Annotated[str | None, Query(max_length=200)] = None,
    login: Annotated[str | None, Query(max_length=64)] = None,
) -> list[AuditEntry]:
    return await store.audit_log(limit=limit, target=target, login=login)
