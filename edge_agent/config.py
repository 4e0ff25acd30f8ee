"""The agent's configuration: typed, validated once at the entry point, passed down.

On a device it is a TOML file (`haodian agent run --config /etc/haodian/agent.toml`) whose keys
are the fields below; command-line flags override single values.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.errors import ConfigError
from edge_agent.state_files import read_json, write_json
from firmware_protocols.credentials import CredentialError, decode_secret, mqtt_password
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import describe_errors
from firmware_protocols.reports import report_key
from firmware_protocols.topics import DEVICE_ID_PATTERN
from mqtt_link.errors import TlsSetupError
from mqtt_link.link import tls_context

log = structlog.get_logger(__name__)


TimeSourceName = Literal["system", "ntp", "modem", "server"]
TIME_SOURCES: tuple[TimeSourceName, ...] = ("system", "ntp", "modem", "server")


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN.pattern)]
    broker_url: str = "mqtt://127.0.0.1:1883"
    # Base64 raw Ed25519 public keys the device trusts for announces (several during rotation).
    server_keys: Annotated[list[str], Field(min_length=1)]
    # Where the agent keeps what must survive a restart (dedup window, outbox, settings, boot
    # record); default .haodian/agent/<device_id>.
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
    # MQTT 3.1.1 works on every broker (the embedded amqtt speaks only 3.1.1); 5 adds a session
    # expiry, so a broker does not keep a scrapped device's queue forever.
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    session_expiry_s: Annotated[int, Field(ge=60)] = 7 * 24 * 3600
    # The device's own secret, issued once at provisioning (`haodian devices provision`): at
    # every connect the agent signs a fresh time-stamped password with it (username: the device
    # id). It overrides `username`/`password`, which are for brokers set up otherwise.
    device_secret: SecretStr | None = None
    # Fixed credentials; they override any user:password in broker_url.
    username: str | None = None
    password: SecretStr | None = None
    # TLS for mqtts:// URLs: the CA that signed the broker's certificate (default: the system's),
    # and a client certificate and key for mutual TLS.
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # The slot the factory image is in and its version is `firmware`; from the first update on,
    # the boot control (state folder, `bootctl.json`) says which slot runs and its version.
    slot: Literal["a", "b"] = "a"
    # Base64 raw Ed25519 public keys of the release keys this device installs updates from. They
    # are not the server keys: a compromised server can announce but cannot push firmware.
    # None provisioned: every update is refused.
    release_keys: list[str] = Field(default_factory=list)
    # OTA: download attempts before the update is reported failed (each resumes the last), the
    # first pause between them (doubling up to a minute), the device's own download rate cap,
    # the trial boots a new slot gets to commit in (1: any reboot before commit rolls back), and
    # how long the new version may take to reach the broker in its health check.
    ota_download_attempts: Annotated[int, Field(ge=1, le=100)] = 10
    ota_retry_initial_s: Annotated[float, Field(gt=0)] = 2.0
    ota_max_rate_bps: Annotated[int, Field(ge=1024)] | None = 256 * 1024
    ota_trial_boots: Annotated[int, Field(ge=1, le=5)] = 1
    ota_health_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    # What an update carries: "agent", an agent build the launcher runs from the slot
    # (`ota.builds`); "image", opaque bytes (the simulated boards, which run in one process). And
    # how long a trial boot may run without committing before the launcher stops it as hung.
    ota_payload: Literal["agent", "image"] = "agent"
    ota_trial_deadline_s: Annotated[float, Field(ge=10)] = 300.0
    # A cap on how fast an install writes the slot (bytes/s; None: as fast as the flash takes
    # it): on slow NAND a full-speed write stalls the fsyncs the announce path waits for.
    ota_install_rate_bps: Annotated[int, Field(ge=1024)] | None = None
    # Uplink messages kept on disk while offline: acks always, telemetry up to this many (five
    # hours of health at the default interval, plus the events around an outage).
    outbox_max_telemetry: Annotated[int, Field(ge=10, le=100_000)] = 500
    # Fault thresholds for health events and diagnose. A few MB keeps SQLite and the outbox
    # writing; below that the dedup window can no longer be stored.
    storage_warn_kb: Annotated[int, Field(ge=0)] = 20 * 1024
    storage_fail_kb: Annotated[int, Field(ge=0)] = 2 * 1024
    battery_low_pct: Annotated[int, Field(ge=0, le=100)] = 20

    # Time (`timekeeper`): the sources asked, best first ("system": the kernel says NTP keeps
    # the clock; "ntp": our own SNTP query to `ntp_servers`; "modem": the 4G network's time;
    # "server": the fleet server's signed time at `time_url`, e.g.
    # https://fleet.example.com/api/v1/time), and how often the clock is checked again.
    time_sources: list[TimeSourceName] = Field(default_factory=lambda: list(TIME_SOURCES))
    ntp_servers: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.\-\[\]:]{1,255}$")]] = Field(
        default_factory=list
    )
    time_url: Annotated[str, StringConstraints(pattern=r"^https?://[\x21-\x7e]{1,500}$")] | None = None
    time_sync_interval_s: Annotated[float, Field(ge=10, le=86_400)] = 3600.0

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

    @model_validator(mode="before")
    @classmethod
    def _default_state_dir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("state_dir") is None and isinstance(data.get("device_id"), str):
            return {**data, "state_dir": Path(".haodian/agent") / data["device_id"]}
        return data

    @classmethod
    def load(cls, file: Path | None = None, **overrides: Any) -> AgentConfig:
        """The configuration from a TOML `file` (if any) with `overrides` on top (None values are
        left out); raise `ConfigError` naming every bad key."""
        values: dict[str, Any] = {}
        if file is not None:
            try:
                values = tomllib.loads(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read agent configuration {file}: {exc}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            where = f" in {file}" if file else ""
            raise ConfigError(f"bad agent configuration{where}: {describe_errors(exc.errors())}") from exc

    @field_validator("device_secret")
    @classmethod
    def _secret_decodes(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                decode_secret(value.get_secret_value())
            except CredentialError as exc:
                raise ValueError(str(exc)) from None
        return value

    def report_key(self) -> bytes | None:
        """The key this device signs its reports with, if it holds a secret (`reports`)."""
        if self.device_secret is None:
            return None
        return report_key(decode_secret(self.device_secret.get_secret_value()))

    def mqtt_password(self, now_s: float | None = None) -> str | None:
        """A fresh signed password for a connect at `now_s` (default: the board's clock; the
        agent gives its corrected time), or the fixed one, or None."""
        if self.device_secret is not None:
            secret = decode_secret(self.device_secret.get_secret_value())
            return mqtt_password(secret, self.device_id, time.time() if now_s is None else now_s)
        return self.password.get_secret_value() if self.password else None

    def broker_endpoint(self) -> BrokerEndpoint:
        """The broker from `broker_url`, with the device's credentials in place of any in the URL."""
        endpoint = BrokerEndpoint.from_url(self.broker_url)
        if self.device_secret is not None:
            return BrokerEndpoint(endpoint.host, endpoint.port, self.device_id, self.mqtt_password(), endpoint.tls)
        if self.username is None:
            return endpoint
        password = self.password.get_secret_value() if self.password else None
        return BrokerEndpoint(endpoint.host, endpoint.port, self.username, password, endpoint.tls)

    def tls(self, *, check_dates: bool = True) -> ssl.SSLContext | None:
        """The client TLS context for an `mqtts://` broker, None for plain MQTT; `check_dates`
        False: the agent checks the certificate's dates on its corrected clock."""
        if not self.broker_url.startswith("mqtts://"):
            return None
        try:
            return tls_context(self.ca_file, self.client_cert, self.client_key, check_dates=check_dates)
        except TlsSetupError as exc:
            raise ConfigError(str(exc)) from exc


CONFIG_OVERRIDES_FILE = "config-overrides.json"


class LiveConfig:
    """The configuration while the agent runs: the file's, with what `set_config` commands
    changed on top (kept in `config-overrides.json`, so a change survives a restart), and the
    firmware and slot the boot control chose."""

    def __init__(self, config: AgentConfig) -> None:
        self._path = config.state_dir / CONFIG_OVERRIDES_FILE
        self.current = _with_overrides(config, self._path)

    async def set(self, key: str, value: Any) -> None:
        """Change one runtime setting now and for later runs; `ConfigError` if the value is wrong."""
        try:
            self.current = AgentConfig.model_validate({**self.current.model_dump(), key: value})
        except ValidationError as exc:
            raise ConfigError(f"bad value for {key}: {exc.errors()[0]['msg']}") from exc
        overrides = read_json(self._path) or {}
        overrides[key] = value
        await asyncio.to_thread(write_json, self._path, overrides)

    def booted(self, firmware: str, slot: Literal["a", "b"]) -> None:
        """The version and slot that run (after an update they are not the file's)."""
        self.current = self.current.model_copy(update={"firmware": firmware, "slot": slot})


def _with_overrides(config: AgentConfig, path: Path) -> AgentConfig:
    """`config` with the runtime settings a `set_config` command changed, if they still validate."""
    overrides = read_json(path)
    if not overrides:
        return config
    try:
        return AgentConfig.model_validate({**config.model_dump(), **overrides})
    except ValidationError as exc:
        log.warning("config overrides ignored", path=str(path), error=json.dumps(exc.errors(), default=str)[:300])
        return config
