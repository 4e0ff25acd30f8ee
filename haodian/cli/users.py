"""`haodian users ...` (accounts, on the database directly: how the first ops-admin is made)
and `haodian login` / `haodian logout` (a token from a running server, kept for the CLIs).

    haodian users add ops --role ops-admin                     asks for the password twice
    haodian users add agent7 --role field-agent --stores S-WJ,S-HLG --agent A-WJ
    haodian users add m1 --role merchant --merchant M00001
    haodian users add backend --role backend --service         no password: API tokens only
    haodian users list | disable LOGIN | enable LOGIN | password LOGIN | token LOGIN [--days 90]
    haodian login --server https://fleet.example --login ops   saves a token for `haodian fleet` / `ota`
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx

from haodian.api_client import DEFAULT_SERVER, checked, save_token
from haodian.cli.kit import in_thread
from haodian.cli.output import table


def add_parser(sub: Any) -> None:
    users = sub.add_parser(
        "users",
        help="accounts and roles, on the database (the first ops-admin is made here)",
        description="Create and manage accounts directly on the database (HAODIAN_DATABASE_URL, or the embedded"
        " one in --data-dir). 账号管理：运营管理员、运营查看、经纪人、商户、支付后台。",
    )
    users.add_argument("--data-dir", default=None, help="data folder of the embedded database (default .haodian)")
    users.set_defaults(run=run_users)
    action = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    add = action.add_parser("add", help="create an account")
    add.add_argument("login")
    add.add_argument("--role", required=True, choices=["ops-admin", "ops-viewer", "field-agent", "merchant", "backend"])
    add.add_argument("--name", default="", help="display name (default: the login)")
    add.add_argument("--merchant", default=None, help="a merchant account's merchant id")
    add.add_argument("--agent", default=None, help="a field agent's id in the registry and tasks")
    add.add_argument("--stores", default="", help="a field agent's stores, comma-separated")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--service", action="store_true", help="no password: a service account for API tokens")
    action.add_parser("list", help="every account")
    for name, text in (("disable", "stop an account and end its sessions"), ("enable", "allow an account again")):
        one = action.add_parser(name, help=text)
        one.add_argument("login")
    password = action.add_parser("password", help="set a new password (ends the account's sessions)")
    password.add_argument("login")
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    stores = action.add_parser("stores", help="reassign a field agent's stores")
    stores.add_argument("login")
    stores.add_argument("stores", help="comma-separated store ids")
    token = action.add_parser("token", help="print a new API token for an account")
    token.add_argument("login")
    token.add_argument("--days", type=int, default=90, help="valid for this many days (default 90)")

    login = sub.add_parser("login", help="sign in to a server and keep the token for the CLIs")
    login.add_argument("--server", default=DEFAULT_SERVER, help=f"fleet server base URL (default {DEFAULT_SERVER})")
    login.add_argument("--login", dest="login_name", required=True, help="your login")
    login.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    login.set_defaults(run=in_thread(run_login))
    logout = sub.add_parser("logout", help="end the saved session and forget its token")
    logout.add_argument("--server", default=DEFAULT_SERVER, help=f"fleet server base URL (default {DEFAULT_SERVER})")
    logout.set_defaults(run=in_thread(run_logout))


def _password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("密码 password: ")
    if confirm and getpass.getpass("再次输入 again: ") != first:
        raise SystemExit("haodian users: 两次输入的密码不一致 the passwords differ")
    return first


@contextlib.asynccontextmanager
async def _auth_store(args: argparse.Namespace) -> AsyncIterator[Any]:
    from pathlib import Path  # noqa: PLC0415

    from fleet_server.auth.store import AuthStore  # noqa: PLC0415
    from fleet_server.db.migrate import migrate  # noqa: PLC0415
    from fleet_server.db.pool import open_pool  # noqa: PLC0415
    from haodian.embedded import EmbeddedDatabase  # noqa: PLC0415
    from haodian.settings import Settings  # noqa: PLC0415

    settings = Settings()
    if args.data_dir is not None:
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url or (
            (await stack.enter_async_context(EmbeddedDatabase(settings.data_dir / "pg"))).url
        )
        pool = await stack.enter_async_context(open_pool(url, max_size=2))
        await migrate(pool)
        yield AuthStore(pool)


async def run_users(args: argparse.Namespace) -> int:
    from fleet_server.auth.roles import Role  # noqa: PLC0415
    from fleet_server.errors import AuthError  # noqa: PLC0415

    async with _auth_store(args) as store:
        try:
            command = args.users_command
            if command == "add":
                password = None if args.service else _password(args, confirm=not args.password_stdin)
                stores = [s.strip() for s in args.stores.split(",") if s.strip()]
                user = await store.create_user(
                    args.login,
                    role=Role(args.role),
                    name=args.name,
                    password=password,
                    merchant_id=args.merchant,
                    agent_id=args.agent,
                    stores=stores,
                )
                await store.audit(
                    None, "user.create", user.login, detail={"role": user.role, "via": "cli"}, login="cli"
                )
                print(f"账号已创建 created {user.login} ({user.role})")
            elif command == "list":
                rows = [
                    [
                        u.login,
                        u.name,
                        u.role,
                        u.merchant_id or ",".join(u.stores) or "-",
                        "停用 off" if u.disabled else "ok",
                    ]
                    for u in await store.users()
                ]
                print(table(["login", "name", "role", "scope", "state"], rows))
            elif command in ("disable", "enable"):
                await store.update_user(args.login, disabled=command == "disable")
                await store.audit(None, f"user.{command}", args.login, detail={"via": "cli"}, login="cli")
                print(f"{args.login}: {'已停用 disabled' if command == 'disable' else '已启用 enabled'}")
            elif command == "password":
                await store.update_user(args.login, password=_password(args, confirm=not args.password_stdin))
                await store.audit(None, "user.password", args.login, detail={"via": "cli"}, login="cli")
                print(f"{args.login}: 密码已更新 password changed; its sessions were ended")
            elif command == "stores":
                stores = [s.strip() for s in args.stores.split(",") if s.strip()]
                await store.update_user(args.login, stores=stores)
                await store.audit(None, "user.stores", args.login, detail={"stores": stores, "via": "cli"}, login="cli")
                print(f"{args.login}: {', '.join(stores)}")
            elif command == "token":
                issued = await store.issue(args.login, ttl=timedelta(days=args.days))
                await store.audit(None, "user.token", args.login, detail={"days": args.days, "via": "cli"}, login="cli")
                print(issued.token)
                print(f"valid until {issued.expires_at.isoformat(timespec='seconds')}", file=sys.stderr)
        except AuthError as exc:
            print(f"haodian users: {exc.message_zh} / {exc}", file=sys.stderr)
            return 1
    return 0


def run_login(args: argparse.Namespace) -> int:
    password = _password(args, confirm=False)
    try:
        with httpx.Client(base_url=args.server, timeout=30) as client:
            answer = checked(
                client.post(
                    "/api/v1/auth/login", json={"login": args.login_name, "password": password, "mode": "token"}
                ),
                "haodian login",
            )
    except httpx.TransportError as exc:
        print(f"haodian login: 无法连接服务器 cannot reach the server at {args.server}: {exc}", file=sys.stderr)
        return 2
    path = save_token(args.server, answer["token"])
    me = answer["me"]
    print(f"已登录 signed in as {me['login']} ({me['role_zh']} {me['role']}) until {answer['expires_at']}")
    print(f"token kept in {path}")
    return 0


def run_logout(args: argparse.Namespace) -> int:
    from haodian.api_client import token_for  # noqa: PLC0415

    token = token_for(args.server, None)
    if token:
        with contextlib.suppress(httpx.TransportError), httpx.Client(base_url=args.server, timeout=10) as client:
            client.post("/api/v1/auth/logout", headers={"authorization": f"Bearer {token}"})
    save_token(args.server, None)
    print("已退出 signed out")
    return 0
