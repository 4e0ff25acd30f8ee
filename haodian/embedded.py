"""The embedded services: an amqtt broker in-process and a private PostgreSQL (pgserver).

They make `haodian demo` and a laptop installation need nothing beyond Python packages. amqtt
speaks MQTT 3.1.1, which is all the device protocol relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from psycopg import sql

from firmware_protocols.endpoint import BrokerEndpoint
from fleet_server.identity import access
from fleet_server.identity.store import BrokerAuthority
from simulators.netproxy import free_port

log = structlog.get_logger(__name__)


class IdentifiedClientsOnly(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints.
    """amqtt auth plugin of an open broker (tests, benchmarks, `haodian broker`): every client
    must give a username, nothing more.

    amqtt keeps the offline queue of a persistent session only for clients that are not
    anonymous, and a device's queue is what carries an announce over a 4G drop.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Any) -> bool:
        return bool(getattr(session, "username", None))


class FleetAuthentication(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints.
    """amqtt auth plugin: server accounts and provisioned devices with a current, valid
    time-stamped HMAC password (`BrokerAuthority`); everyone else is refused at CONNECT."""

    @dataclass
    class Config:
        authority: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        authority: BrokerAuthority = self.config.authority
        account = await authority.authenticate(session.username, session.password, client_id=session.client_id or "")
        return account is not None


class FleetTopicAccess(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints.
    """amqtt topic plugin: the access rules of `fleet_server.identity.access` on every publish,
    subscribe and delivery. A refused publish is dropped (and logged); a refused subscription
    gets the failure return code."""

    @dataclass
    class Config:
        authority: Any = None

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None, action: Any = None) -> bool:
        authority: BrokerAuthority = self.config.authority
        if session is None or not session.username or topic is None:
            return False
        account = authority.account_of(session.username)
        if action == Action.PUBLISH:
            allowed = access.may_publish(account, topic)
        elif action == Action.SUBSCRIBE:
            allowed = access.may_subscribe(account, topic)
        else:
            return access.may_receive(account, topic)
        if not allowed:
            log.warning(
                "broker refused a topic",
                account=account.username,
                kind=account.kind,
                action=str(action),
                topic=topic[:200],
            )
        return allowed


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """A TLS listener of the embedded broker: its certificate and key (PEM files), and the port."""

    cert_file: Path
    key_file: Path
    port: int = 0


def _plugin_path(plugin: type) -> str:
    return f"{plugin.__module__}.{plugin.__qualname__}"


class _Subscriptions(dict[str, Any]):
    """amqtt's table of subscriptions, read as a snapshot: its broadcast loop and its connect
    handler iterate over it and await (the topic plugin, retained messages) for each entry, and a
    client subscribing meanwhile made them fail with "dictionary changed size during iteration":
    the message being broadcast was dropped, or the connecting client's session ended (found by
    the wrong-clock tests, issue 24: seven agents connecting while acks flowed)."""

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        return list(super().items())

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))


class _Broker(Broker):  # type: ignore[misc]  # amqtt ships no type hints.
    """amqtt's broker, closing each connection's stream when its handling ends: on several error
    paths (a first packet that is not CONNECT, no data, an error mid-session) amqtt returns
    without closing it, and the socket stayed open until garbage collection (found by the
    wrong-clock tests, issue 24, as "unclosed transport" warnings)."""

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        try:
            await super().stream_connected(reader, writer, listener_name)
        finally:
            if not writer.is_closing():
                writer.close()


class EmbeddedBroker:
    """An amqtt broker in this process. With an `authority`, only provisioned devices and server
    accounts connect and the access rules hold; without one it is open to any named client (the
    tests and benchmarks of other parts). With `tls`, it also listens for MQTT over TLS."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        authority: BrokerAuthority | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.authority = authority
        self.tls = tls
        self.tls_port = (tls.port or free_port(host)) if tls else None
        self._broker: Broker | None = None

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint(self.host, self.port)

    @property
    def tls_endpoint(self) -> BrokerEndpoint | None:
        return None if self.tls_port is None else BrokerEndpoint(self.host, self.tls_port, tls=True)

    async def __aenter__(self) -> Self:
        listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}}
        if self.tls is not None:
            listeners["tls"] = {
                "type": "tcp",
                "bind": f"{self.host}:{self.tls_port}",
                "ssl": True,
                "certfile": str(self.tls.cert_file),
                "keyfile": str(self.tls.key_file),
            }
        plugins: dict[str, Any]
        if self.authority is None:
            plugins = {_plugin_path(IdentifiedClientsOnly): {}}
        else:
            plugins = {
                _plugin_path(FleetAuthentication): {"authority": self.authority},
                _plugin_path(FleetTopicAccess): {"authority": self.authority},
            }
        self._broker = _Broker({"listeners": listeners, "plugins": plugins})
        self._broker._subscriptions = _Subscriptions()  # see _Subscriptions
        await self._broker.start()
        log.info(
            "embedded MQTT broker started",
            endpoint=self.endpoint.url(),
            tls_endpoint=self.tls_endpoint.url() if self.tls_endpoint else None,
            broker="amqtt",
            access_control=self.authority is not None,
        )
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
