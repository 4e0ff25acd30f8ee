"""The one error tree of the device protocol.

    ProtocolError                 anything this package refuses
     ├── MessageError             a topic or payload that is not a valid v1 message
     ├── SignatureError           a signature that is missing, malformed, from an unknown key,
     │                            or does not verify
     ├── ManifestError            a release manifest or artifact that must not be installed
     ├── CredentialError          a device secret or MQTT password that cannot be used or
     │   │                        does not prove the device (credentials.py)
     │   └── ClockSkewError       a genuine password signed too far from the server's clock
     └── CodecError               bytes from a serial line (TTS chip, modem, printer) that do not
                                  decode; carries the stream offset and the reason

Each carries the context a person needs (topic, device id, payment id) in its message.
"""


class ProtocolError(Exception):
    """Base of every error raised by `firmware_protocols`."""


class MessageError(ProtocolError):
    """A topic or payload that is not a valid device-protocol v1 message."""


class SignatureError(ProtocolError):
    """A signed message whose signature cannot be trusted."""


class ManifestError(ProtocolError):
    """A release manifest or artifact that must not be installed, and why."""


class CodecError(ProtocolError):
    """Bytes that do not decode. The only exception a serial decoder raises.

    `offset` counts bytes from the start of the stream the decoder was fed, so a log line points
    at the exact byte in a capture. A decoder that raises has already skipped the bad bytes: call
    it again to go on with the rest of the stream.
    """

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason
