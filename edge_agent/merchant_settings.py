"""The merchant's settings as this device holds them: volume, repeat, quiet hours, voice.

They arrive signed and retained on `down/settings` (so a device that was off gets the latest on
connect), and a `set_volume` command changes the volume on the spot. The device keeps the
newest version on disk: after a power cut it speaks at the merchant's volume before it has
even reached the broker. A retained copy older than what the device holds is ignored.
"""

from __future__ import annotations

from pathlib import Path

import structlog

from edge_agent.config import AgentConfig
from edge_agent.state_files import write_atomically
from firmware_protocols.errors import MessageError
from firmware_protocols.messages import Settings, parse_payload

log = structlog.get_logger(__name__)


class MerchantSettings:
    def __init__(self, path: Path, defaults: Settings) -> None:
        self._path = path
        self.current = self._load() or defaults

    @classmethod
    def of_device(cls, config: AgentConfig) -> MerchantSettings:
        """The settings a device keeps in its state folder; until the first arrive, the configured volume."""
        defaults = Settings(device_id=config.device_id, ts=0, version=0, key_id="default", volume=config.volume)
        return cls(config.state_dir / "settings.json", defaults)

    def _load(self) -> Settings | None:
        try:
            payload = self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("stored settings unreadable; using defaults", path=str(self._path), error=str(exc))
            return None
        try:
            return parse_payload(Settings, payload, topic=str(self._path))
        except MessageError as exc:
            log.warning("stored settings invalid; using defaults", path=str(self._path), error=str(exc))
            return None

    def set_volume(self, volume: int, version_ms: int) -> None:
        """A `set_volume` command: the volume changes now, as a local version newer than any held
        (the server updates its retained copy as well, so a later retained message agrees)."""
        current = self.current
        self.offer(
            current.model_copy(
                update={"volume": volume, "version": max(version_ms, current.version + 1), "key_id": "local", "sig": ""}
            )
        )

    def offer(self, settings: Settings) -> bool:
        """Take `settings` if newer than the current ones and keep them on disk; True if taken."""
        if settings.version <= self.current.version:
            return False
        self.current = settings
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self._path, settings.to_json())
        except OSError as exc:
            # Applied anyway: the merchant hears the change now; the retained copy restores it
            # after a restart once the disk is writable again.
            log.warning("settings applied but not stored", path=str(self._path), error=str(exc))
        return True
