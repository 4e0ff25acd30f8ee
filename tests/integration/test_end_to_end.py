"""End to end, each part its own process: broker, fleet server, bridge, two agents.

A signed payment notification goes in at the bridge; both of the merchant's speakers must say
"微信收款十二点五元" exactly once, the bridge must record both acks, and the fleet server must
show both devices online with health. Run against the embedded broker (amqtt, started with
`haodian broker`) with the embedded PostgreSQL, and against the machine's Mosquitto and
PostgreSQL.
"""

from __future__ import annotations

import json
import socket
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from firmware_protocols.messages import Channel
from firmware_protocols.signing import encode_public_key
from haodian.keys import dev_key_paths, ensure_dev_keys, read_rsa_private_key, read_signing_key
from simulators.backend import PaymentBackend
from simulators.netproxy import free_port
from simulators.registry import register_now
from tests.processes import Processes, cli_token

pytestmark = pytest.mark.integration

# Upper bounds for things to happen, generous so a busy machine never fails the test.
START_TIMEOUT_S = 60.0
EVENT_TIMEOUT_S = 30.0


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()


def wait_until(check: Callable[[], bool], procs: Processes, what: str, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        procs.check_alive()
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{procs.logs()}")
        time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def run_end_to_end(
    procs: Processes,
    tmp_path: Path,
    *,
    broker_port: int,
    database_url: str,
    tag: str,
    extra_env: dict[str, str] | None = None,
) -> None:
    data_dir = tmp_path / "data"
    ensure_dev_keys(data_dir)  # before the servers start, so they share one set
    server_key = encode_public_key(read_signing_key(dev_key_paths(data_dir)[0]).public_key())
    fleet_port, bridge_port = free_port(), free_port()
    common = {
        "HAODIAN_MQTT_URL": f"mqtt://127.0.0.1:{broker_port}",
        "HAODIAN_DATABASE_URL": database_url,
        "HAODIAN_DATA_DIR": str(data_dir),
        "HAODIAN_ACK_TIMEOUT_S": "2",
        **(extra_env or {}),
    }
    procs.start(
        "fleet",
        "server",
        "--parts",
        "fleet",
        "--port",
        str(fleet_port),
        env={**common, "HAODIAN_MQTT_CLIENT_PREFIX": f"e2e-{tag}-fleet"},
    )
    procs.start(
        "bridge",
        "server",
        "--parts",
        "bridge",
        "--port",
        str(bridge_port),
        env={**common, "HAODIAN_MQTT_CLIENT_PREFIX": f"e2e-{tag}-bridge"},
    )
    devices = [f"E2E{tag}A", f"E2E{tag}B"]
    for device in devices:
        procs.start_agent(
            device,
            broker_port=broker_port,
            server_key=server_key,
            state_dir=tmp_path / device,
            audio_dir=tmp_path / device / "audio",
        )
    # Accounts made the way an operator makes them: `haodian users` on the database.
    viewer = cli_token(common, tmp_path, f"e2e-{tag}-viewer", "ops-viewer")
    backend = cli_token(common, tmp_path, f"e2e-{tag}-backend", "backend")
    with (
        httpx.Client(base_url=f"http://127.0.0.1:{fleet_port}", timeout=5, headers=_bearer(viewer)) as fleet,
        httpx.Client(base_url=f"http://127.0.0.1:{bridge_port}", timeout=5, headers=_bearer(backend)) as bridge,
    ):
        # The merchant is in the registry (bindings refer to it); the devices join it at their hello.
        register_now(database_url, merchants=[f"M{tag}"])
        check_payment_path(procs, fleet, bridge, devices, data_dir, tmp_path, tag)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def check_payment_path(
    procs: Processes,
    fleet: httpx.Client,
    bridge: httpx.Client,
    devices: list[str],
    data_dir: Path,
    tmp_path: Path,
    tag: str,
) -> None:
    for client in (fleet, bridge):
        wait_until(lambda c=client: c.get("/healthz").status_code == 200, procs, "the servers", START_TIMEOUT_S)

    def online_with_health(device: str) -> bool:
        response = fleet.get(f"/api/v1/devices/{device}")
        return response.status_code == 200 and response.json()["online"] and response.json()["last_health"]

    for device in devices:
        wait_until(lambda d=device: online_with_health(d), procs, f"{device} online with health", START_TIMEOUT_S)
        assert bridge.post("/api/v1/bindings", json={"device_id": device, "merchant_id": f"M{tag}"}).is_success

    backend = PaymentBackend(read_rsa_private_key(dev_key_paths(data_dir)[1]), str(bridge.base_url), [f"M{tag}"])
    body, headers = backend.notification(amount_fen=1250, channel=Channel.WECHAT)
    payment_id = json.loads(body)["payment_id"]
    accepted = bridge.post("/api/v1/notifications/backend", content=body, headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["devices"] == 2

    def deliveries() -> list[dict[str, object]]:
        return bridge.get(f"/api/v1/payments/{payment_id}").json()["deliveries"]

    wait_until(lambda: [d["status"] for d in deliveries()] == ["played", "played"], procs, "both acks")
    assert [d["text"] for d in deliveries()] == ["微信收款十二点五元"] * 2

    # The platform retries the notification; nobody hears it twice.
    again = bridge.post("/api/v1/notifications/backend", content=body, headers=headers)
    assert again.json()["duplicate"] is True
    time.sleep(2.5)  # longer than the ack timeout: a wrong republish would have happened by now
    assert [d["attempts"] for d in deliveries()] == [1, 1]
    for device in devices:
        played = sorted(
            set((tmp_path / device / "audio").glob("*.wav")) - set((tmp_path / device / "audio").glob("alert_*"))
        )
        assert [p.name for p in played] == [f"{payment_id}.wav"]
        with wave.open(str(played[0])) as wav:
            assert wav.getnframes() / wav.getframerate() > 1.0  # a real sentence, not an empty file
    summary = bridge.get("/api/v1/deliveries/summary").json()
    assert (summary["deliveries"], summary["delivered"], summary["delivery_rate"]) == (2, 2, 1.0)


def test_end_to_end_on_embedded_broker_and_database(processes, tmp_path, embedded_database, unique):
    broker_port = free_port()
    processes.start("broker", "broker", "--port", str(broker_port))
    wait_until(lambda: port_open(broker_port), processes, "the embedded broker", START_TIMEOUT_S)
    # `haodian broker` is amqtt: MQTT 3.1.1 only, and it drops a message acknowledged late, so
    # the ingest acknowledges on receipt there (docs/architecture.md, "Device messages").
    run_end_to_end(
        processes,
        tmp_path,
        broker_port=broker_port,
        database_url=embedded_database,
        tag=unique,
        extra_env={"HAODIAN_INGEST_ACK_AFTER_COMMIT": "false"},
    )


def test_end_to_end_on_machine_mosquitto_and_postgresql(
    processes, tmp_path, machine_mosquitto, machine_database, unique
):
    run_end_to_end(processes, tmp_path, broker_port=machine_mosquitto[1], database_url=machine_database, tag=unique)
