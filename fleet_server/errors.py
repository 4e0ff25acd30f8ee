"""The fleet server's one error base: a refusal with a code for programs and the message for
people in English (the exception's text) and Chinese (`message_zh`). The API turns each into
`{"error": {"code", "message", "message_zh"}}` with the status its code calls for.

    FleetError
    ├── TaskError      (tasks)        a task action its state does not allow
    ├── OtaError       (ota.store)    a release or campaign request refused
    ├── AuthError      (auth.store)   an account action refused, a wrong login
    └── RemoteError    (remote)       a command or settings change that could not be sent
"""

from __future__ import annotations


class FleetError(Exception):
    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.code = code
        self.message_zh = message_zh
