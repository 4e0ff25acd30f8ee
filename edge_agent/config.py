"""The agent's configuration: typed, validated once at the entry point, passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from firmware_protocols.topics import DEVICE_ID_PATTERN


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Base64 raw Ed25519 public keys the device trusts for announces (several during rotation).
    server_keys: Annotated[list[str], Field(min_length=1)]
    state_dir: Path
    model: str = "HD-S1"
    serial: str = ""
    firmware: str = "0.1.0"
    # Devices report every 60 s in the field; the demo shortens it to see health quickly.
    health_interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    keepalive_s: Annotated[int, Field(ge=5, le=600)] = 30
    volume: Annotated[int, Field(ge=0, le=10)] = 7
    # Reconnect backoff: start quickly (a 4G blip is short), cap so a fleet returning after a
    # broker outage does not hammer it, jitter so it does not return all at once.
    reconnect_initial_s: Annotated[float, Field(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0)] = 30.0

    # Hardware. Each serial part is a pyserial URL (a device such as /dev/ttyS1, or a link to a
    # pseudo-terminal); absent means the device has no such part (the modem is then simulated).
    # Speech goes to the TTS chip when there is one, else voice clips to ALSA (`audio_device`)
    # or, with neither, to WAV files (the simulated speaker).
    tts_port: str | None = None
    tts_dialect: Literal["syn6288", "xfs5152"] = "syn6288"
    tts_baud: Annotated[int, Field(gt=0)] = 9600  # the SYN6288's default; the XFS5152 also starts at 9600
    modem_port: str | None = None
    modem_baud: Annotated[int, Field(gt=0)] = 115200  # Quectel modules' default UART rate
    printer_port: str | None = None
    printer_baud: Annotated[int, Field(gt=0)] = 9600
    print_receipts: bool = True
    audio_device: str | None = None
