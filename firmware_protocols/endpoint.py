"""Where a broker is: `mqtt://user:password@host:port` or `mqtts://...` for TLS."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from firmware_protocols.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class BrokerEndpoint:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerEndpoint:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts"}:
            raise ProtocolError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ProtocolError(f"broker URL {url!r}: no host")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise ProtocolError(f"broker URL {url!r}: bad port") from exc
        return cls(
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "mqtts",
        )

    def url(self, *, with_password: bool = False) -> str:
        """The URL again; the password is left out unless asked for, so it is safe to log."""
        auth = ""
        if self.username:
            auth = self.username
            if self.password and with_password:
                auth += f":{self.password}"
            auth += "@"
        return f"{'mqtts' if self.tls else 'mqtt'}://{auth}{self.host}:{self.port}"
