"""The bridge's error tree.

BridgeError
 ├── NotificationRejected      refused notification, with an HTTP status and a code
 └── CoalescerClosed           a write submitted after the group commit stopped (coalesce.py)
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of the payment bridge's errors."""


class NotificationRejected(BridgeError):
    """A notification refused before anything was announced; recorded as rejected."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.status = status
        self.code = code
        self.reason = reason
