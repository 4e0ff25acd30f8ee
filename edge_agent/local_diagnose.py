"""`haodian agent diagnose`: the checklist, run on the device by a field agent.

When the agent runs, its serial ports are taken: the checklist then reads the health report the
agent left in its state folder (written every health interval) and probes the broker itself.
When it does not run, the checklist opens the hardware and reads every part directly.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.boot import StateLock
from edge_agent.bootstrap import open_hardware
from edge_agent.clock import Clock, SystemClock
from edge_agent.config import AgentConfig
from edge_agent.diagnose import LAST_ANNOUNCEMENT_FILE, Check, Observed, checklist, read_status
from edge_agent.errors import AgentError
from edge_agent.health import health_report, read_parts
from edge_agent.merchant_settings import MerchantSettings
from edge_agent.state_files import read_json
from firmware_protocols.messages import Health
from mqtt_link.errors import LinkDown
from mqtt_link.link import probe


async def _broker(config: AgentConfig) -> tuple[bool, str]:
    try:
        endpoint = config.broker_endpoint()
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
    now_ms = (clock or SystemClock()).now_ms()
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
    broker_ok, broker_detail = await _broker(config)
    observed = Observed(
        health=health,
        broker_ok=broker_ok,
        broker_detail=broker_detail,
        now_ms=now_ms,
        agent_pid=pid,
        last_announcement=read_json(config.state_dir / LAST_ANNOUNCEMENT_FILE),
    )
    return checklist(observed, config), source
