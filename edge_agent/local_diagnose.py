"""`haodian agent diagnose`: the checklist, run on the device by a field agent.

When the agent runs, its serial ports are taken: the checklist then reads the health report the
agent left in its state folder (written every health interval) and probes the broker itself.
When it does not run, the checklist opens the hardware and reads every part directly.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_agent.boot import StateLock
from edge_agent.bootstrap import open_hardware
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.diagnose import LAST_ANNOUNCEMENT_FILE, Check, Observed, checklist, read_status
from edge_agent.errors import AgentError
from edge_agent.health import health_report, read_parts
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.state_files import read_json
from edge_agent.time_sources import ServerTime, TimeSourceError
from edge_agent.timekeeper import CLOCK_FILE
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Health
from firmware_protocols.signing import Verifier, decode_public_key
from mqtt_link.errors import LinkDown
from mqtt_link.link import probe


async def _clock(config: AgentConfig, board: Clock) -> dict[str, Any]:
    """The clock as the agent left it (`clock.json`), and the server's signed time asked now."""
    state: dict[str, Any] = read_json(config.state_dir / CLOCK_FILE) or {"source": "board", "offset_ms": 0}
    samples = dict(state.get("samples") or {})
    samples.pop("server", None)  # only a fresh answer counts here
    if config.time_url:
        verifier = Verifier([decode_public_key(k) for k in config.server_keys])
        source = ServerTime(config.time_url, config.device_id, verifier, ca_file=config.ca_file)
        try:
            samples["server"] = asdict(await source.sample(board))
        except TimeSourceError as exc:
            samples["server"] = {"error": str(exc)}
    return {**state, "samples": samples}


def _trusted_now_s(clock: dict[str, Any], board: Clock) -> float:
    server = clock["samples"].get("server") or {}
    offset = server.get("offset_ms", clock.get("offset_ms") or 0)
    return (board.now_ms() + int(offset)) / 1000


async def _broker(config: AgentConfig, now_s: float) -> tuple[bool, str]:
    try:
        endpoint = config.broker_endpoint()
        # Signed with the corrected time, as the agent signs its own: a board clock the agent
        # corrects must not make the broker look down here.
        endpoint = BrokerEndpoint(
            endpoint.host,
            endpoint.port,
            endpoint.username,
            config.mqtt_password(now_s) or endpoint.password,
            endpoint.tls,
        )
        rtt_ms = await probe(endpoint, client_id=f"{config.device_id}-diag", tls=config.tls())
    except (LinkDown, AgentError) as exc:
        return False, str(exc)
    return True, f"{endpoint.url()} {rtt_ms} ms"


async def _read_hardware(config: AgentConfig, audio_dir: Path, now_ms: int) -> Health:
    settings = MerchantSettings.of_device(config).current
    async with open_hardware(config, audio_dir=audio_dir) as hardware:
        parts = await read_parts(hardware.speaker, hardware.modem, hardware.printer, hardware.system)
    return health_report(
        config.device_id,
        now_ms,
        parts,
        uptime_s=0,
        volume=settings.volume,
        queue_depth=0,
        played_total=0,
        firmware=config.firmware,
        slot=config.slot,
    )


async def run(config: AgentConfig, *, audio_dir: Path, clock: Clock | None = None) -> tuple[list[Check], str]:
    """The checklist for the device `config` describes, and where its parts were read from."""
    board = clock or SystemClock()
    now_ms = board.now_ms()
    pid = StateLock(config.state_dir).holder()
    source = "hardware"
    if pid is not None:
        status = read_status(config.state_dir)
        if status is None:
            # Its ports are taken, and two readers on one UART steal each other's bytes.
            raise AgentError(f"the agent (pid {pid}) has not written a health report yet; try again in a minute")
        health, _connected, written_ms = status
        source = f"agent report {max(0, now_ms - written_ms) // 1000} s old"
    else:
        health = await _read_hardware(config, audio_dir, now_ms)
    clock_state = await _clock(config, board)
    broker_ok, broker_detail = await _broker(config, _trusted_now_s(clock_state, board))
    observed = Observed(
        health=health,
        broker_ok=broker_ok,
        broker_detail=broker_detail,
        now_ms=now_ms,
        agent_pid=pid,
        last_announcement=read_json(config.state_dir / LAST_ANNOUNCEMENT_FILE),
        clock=clock_state,
    )
    return checklist(observed, config), source
