"""The one error tree of the device protocol.

    ProtocolError                 anything this package refuses
     ├── MessageError             a topic or payload that is not a valid v1 message
     └── SignatureError           a signature that is missing, malformed, from an unknown key,
                                  or does not verify

Each carries the context a person needs (topic, device id, payment id) in its message.
"""


class ProtocolError(Exception):
    """Base of every error raised by `firmware_protocols`."""


class MessageError(ProtocolError):
    """A topic or payload that is not a valid device-protocol v1 message."""


class SignatureError(ProtocolError):
    """A signed message whose signature cannot be trusted."""
