"""Every benchmark scenario runs from a clean checkout on the machine's Mosquitto and PostgreSQL
(and the announce path on the embedded ones), at a small size: what is checked is that each
completes and loses nothing, never how fast (that is BENCHMARKS.md's business)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bench(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout[done.stdout.index("{\n") :])
    assert report["machine"]["cpus"] >= 1
    return report


@pytest.mark.usefixtures("machine_pg_admin")
def test_announce_on_a_private_mosquitto_with_two_bridges() -> None:
    figures = bench("announce", "--rate", "40", "--duration", "3", "--devices", "20", "--bridges", "2")["figures"]
    assert figures["sent"] == figures["answered_ok"] == figures["delivered"] == 120
    assert figures["missed"] == figures["pending"] == 0
    assert figures["latency_ms"]["p50"] is not None
    assert figures["ceiling_broker_hop_ms"]["p50"] is not None
    assert "deploy/mosquitto.conf" in figures["broker"]


def test_announce_on_the_embedded_broker_and_database() -> None:
    report = bench(
        "announce",
        "--rate",
        "20",
        "--duration",
        "2",
        "--devices",
        "5",
        "--broker",
        "embedded",
        "--database",
        "embedded",
    )
    figures = report["figures"]
    assert figures["delivered"] == figures["sent"] == 40
    assert "amqtt" in figures["broker"]
    assert "pgserver" in figures["database"]


@pytest.mark.usefixtures("machine_pg_admin")
def test_ingest_with_two_processes_sharing_the_stream() -> None:
    figures = bench("ingest", "--devices", "300", "--reports", "2", "--interval", "0", "--ingesters", "2")["figures"]
    assert figures["published"] == figures["stored"] == 600
    assert figures["lost"] == 0
    assert figures["ingest_cpu_us_per_report"] > 0


@pytest.mark.usefixtures("machine_pg_admin", "machine_mosquitto")
def test_ingest_on_the_machines_mosquitto_at_the_report_interval() -> None:
    figures = bench("ingest", "--devices", "200", "--reports", "2", "--interval", "2", "--broker", "machine")["figures"]
    assert figures["stored"] == figures["published"] == 400


@pytest.mark.usefixtures("machine_pg_admin")
def test_api_and_query() -> None:
    api = bench("api", "--rate", "50", "--duration", "2", "--devices", "200")["figures"]
    assert api["answered"] == api["sent"] == 100
    assert api["errors"] == 0
    query = bench("query", "--devices", "200", "--days", "2", "--repeats", "1")["figures"]
    timings = query["timings_ms"]
    assert len(timings["fleet summary, 30 local days to now"]) == 20  # 20 runs at least
    assert set(timings) >= {"figures by district, last 30 days", "a device's card, 30 days"}
    assert query["raw_summary_ms"] > 0


@pytest.mark.usefixtures("machine_pg_admin")
def test_rollups() -> None:
    figures = bench("rollups", "--devices", "50", "--repeats", "1")["figures"]
    assert figures["counted"] == 2 * figures["per_run"]  # the warm-up's and the built run's
    assert set(figures["runs"]) == {"rollups built", "rollups not built (floor)"}


def test_connections() -> None:
    figures = bench("connections", "--devices", "300", "--processes", "2")["figures"]
    assert figures["connected"] == figures["held"] == 300
    assert figures["simulator_kb_per_connection"] > 0
