"""The embedded services: an amqtt broker in-process and a private PostgreSQL (pgserver).

They make `haodian demo` and a laptop installation need nothing beyond Python packages. amqtt
speaks MQTT 3.1.1, which is all the device protocol relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from amqtt.broker import Broker
from amqtt.plugins.base import BaseAuthPlugin
from psycopg import sql

from firmware_protocols.endpoint import BrokerEndpoint

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class IdentifiedClientsOnly(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints.
    """amqtt auth plugin: every client must give a username.

    amqtt keeps the offline queue of a persistent session only for clients that are not
    anonymous, and a device's queue is what carries an announce over a 4G drop. Passwords and
    per-device ACLs are enforced by the device-identity work; this plugin only refuses
    anonymous clients.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        return bool(getattr(session, "username", None))


class EmbeddedBroker:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._broker: Broker | None = None

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.host, self.port)

    async def __aenter__(self) -> Self:
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {f"{IdentifiedClientsOnly.__module__}.{IdentifiedClientsOnly.__qualname__}": {}},
        }
        self._broker = Broker(config)
        await self._broker.start()
        log.info("embedded MQTT broker started", endpoint=self.endpoint.url(), broker="amqtt")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._broker is not None:
            with contextlib.suppress(Exception):  # amqtt raises on shutdown races; we are leaving anyway.
                await self._broker.shutdown()
            self._broker = None


class EmbeddedDatabase:
    """A private PostgreSQL in `data_dir`, with `database` created (or re-created if `fresh`)."""

    def __init__(self, data_dir: Path, database: str = "haodian", *, fresh: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        self.fresh = fresh
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{self.database}?host={self.data_dir}"

    def _start(self) -> None:
        with warnings.catch_warnings():
            # platformdirs, under pgserver, warns when XDG_RUNTIME_DIR is unset (containers, CI);
            # pgserver keeps its socket in the data folder, so the fallback does not matter.
            warnings.simplefilter("ignore", UserWarning)
            import pgserver  # noqa: PLC0415 - heavy, and only needed when embedding.

            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
        with psycopg.connect(f"postgresql://postgres@/postgres?host={self.data_dir}", autocommit=True) as conn:
            name = sql.Identifier(self.database)
            if self.fresh:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._start)
        log.info("embedded PostgreSQL started", data_dir=str(self.data_dir), database=self.database)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None
