"""Shared fixtures: the async backend, and real databases and brokers.

Integration tests run against real services: the embedded ones (pgserver, amqtt) always, and
the machine's PostgreSQL (127.0.0.1:5432, or the server HAODIAN_TEST_DATABASE_URL names: a URL of
a database there whose user may create databases) and Mosquitto (127.0.0.1:1883) where they run;
a test needing one that cannot be reached is skipped with the reason.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Iterator

import psycopg
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # platformdirs warns without XDG_RUNTIME_DIR
    import pgserver
from psycopg import sql

from fleet_server.db.pool import with_database

# The PostgreSQL the tests (and the benchmarks: bench/env.py) create their databases on.
TEST_DATABASE_URL = os.environ.get("HAODIAN_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_PG = with_database(TEST_DATABASE_URL, "{db}")
MACHINE_MQTT = ("127.0.0.1", 1883)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def embedded_pg_admin(tmp_path_factory) -> Iterator[str]:
    """A private PostgreSQL for the session (pgserver); yields a URL template with `{db}`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # platformdirs without XDG_RUNTIME_DIR
        folder = tmp_path_factory.mktemp("pg")
        server = pgserver.get_server(folder, cleanup_mode="stop")
    yield f"postgresql://postgres@/{{db}}?host={folder}"
    server.cleanup()


@pytest.fixture(scope="session")
def machine_pg_admin() -> str:
    try:
        with psycopg.connect(MACHINE_PG.format(db="postgres"), connect_timeout=3):
            pass
    except psycopg.Error as exc:
        pytest.skip(f"the PostgreSQL at {TEST_DATABASE_URL} cannot be reached: {exc}")
    return MACHINE_PG


def _fresh_database(url_template: str) -> Iterator[str]:
    """Create a uniquely named database from a URL template with `{db}`; drop it afterwards."""
    name = f"haodian_test_{uuid.uuid4().hex[:12]}"
    admin_url = url_template.format(db="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield url_template.format(db=name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def embedded_database(embedded_pg_admin) -> Iterator[str]:
    """A fresh, empty database in the embedded PostgreSQL."""
    yield from _fresh_database(embedded_pg_admin)


@pytest.fixture
def machine_database(machine_pg_admin) -> Iterator[str]:
    """A fresh, empty database in the machine's PostgreSQL, dropped afterwards."""
    yield from _fresh_database(machine_pg_admin)


@pytest.fixture(scope="session")
def machine_mosquitto() -> tuple[str, int]:
    if not _reachable(*MACHINE_MQTT):
        pytest.skip("the machine's Mosquitto at 127.0.0.1:1883 cannot be reached")
    return MACHINE_MQTT


@pytest.fixture
def unique() -> str:
    """A short unique tag, so tests sharing a broker never see each other's devices."""
    return uuid.uuid4().hex[:8]
