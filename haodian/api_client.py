"""What every CLI that talks to a running server shares: `--server` and `--token`, the token
saved by `haodian login`, and one reading of the API's errors.

The token is looked for in this order: `--token`, `HAODIAN_TOKEN`, then the one `haodian
login` saved for that server in `$XDG_CONFIG_HOME/haodian/credentials.json` (mode 0600).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=DEFAULT_SERVER, help=f"fleet server base URL (default {DEFAULT_SERVER})")
    parser.add_argument(
        "--token", default=None, help="API token (default: HAODIAN_TOKEN, else the one `haodian login` saved)"
    )


def credentials_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "haodian" / "credentials.json"


def _saved() -> dict[str, str]:
    try:
        saved = json.loads(credentials_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in saved.items()} if isinstance(saved, dict) else {}


def save_token(server: str, token: str | None) -> Path:
    """Keep (or with None, forget) the token for `server`; only the owner can read the file."""
    path = credentials_file()
    saved = _saved()
    if token is None:
        saved.pop(server.rstrip("/"), None)
    else:
        saved[server.rstrip("/")] = token
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(saved, out, indent=2)
    return path


def token_for(server: str, explicit: str | None) -> str | None:
    return explicit or os.environ.get("HAODIAN_TOKEN") or _saved().get(server.rstrip("/"))


def open_client(args: argparse.Namespace, *, timeout: float) -> httpx.Client:
    token = token_for(args.server, args.token)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.server, timeout=timeout, headers=headers)


def checked(response: httpx.Response, command: str) -> Any:
    """The body of a successful API answer (JSON or text); otherwise exit with the server's error,
    in Chinese and English, after `command`'s name."""
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = f"{error['message_zh']} / {error['message']}"
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        hint = ""
        if response.status_code == 401:
            hint = "\n  先登录 sign in first: haodian login --server URL --login NAME (or --token / HAODIAN_TOKEN)"
        raise SystemExit(f"{command}: {response.status_code} {message}{hint}")
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else response.text
