"""The MQTT link's one error tree.

    LinkError                 anything this package raises
     ├── LinkDown             a publish or a receipt that cannot reach the broker (not connected,
     │                        or the connection broke)
     └── TlsSetupError        a TLS context that cannot be built from the files given

Each names the client id, broker and topic where they apply.
"""


class LinkError(Exception):
    """Base of every error raised by `mqtt_link`."""


class LinkDown(LinkError):
    """A publish could not reach the broker (not connected, or the connection broke)."""


class TlsSetupError(LinkError):
    """The CA, certificate or key files cannot make a TLS context."""
