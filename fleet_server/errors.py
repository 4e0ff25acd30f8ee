"""The fleet server's one error tree. Every refusal carries a code for programs, the message for
people in English (the exception's text) and Chinese (`message_zh`), and the HTTP status its
code calls for, declared here by each class; the HTTP layer renders any of them as
`{"error": {"code", "message", "message_zh"}}` with that status (`http.errors`), so routes just
call their store and let the error travel.

    FleetError                 (default status 422)
    ├── ApiError               a request refused by the HTTP layer itself, with its own status
    ├── DatabaseError          the database cannot be reached or migrated            503
    ├── FieldCryptError        a field key file unusable, an envelope that does not open  500
    ├── ImportRefused          a registry CSV that cannot be read as a whole         422
    ├── FiguresError           a figures window or slice that cannot be answered     422
    ├── TaskError              a task action its state does not allow          404 / 409
    ├── RemoteError            a command or settings change that could not be sent 404 / 503
    ├── BindingError           a binding of a device or merchant not in the registry  404 / 422
    ├── LifecycleError         a lifecycle action its stage does not allow, or a wrong store  404 / 409 / 422
    ├── IdentityError          a device credential request refused             404 / 409
    ├── OtaError               a release or campaign request refused     404 / 409 / 422
    ├── NotifyError            a notification channel refused: unknown, or scope or secret wrong  404 / 422
    └── AuthError              an account action refused, a wrong login  401/403/404/409/422
"""

from __future__ import annotations

from typing import ClassVar


class FleetError(Exception):
    # The status of each code that does not take the class's default.
    STATUS_OF: ClassVar[dict[str, int]] = {}
    DEFAULT_STATUS: ClassVar[int] = 422

    def __init__(self, code: str, message: str, message_zh: str) -> None:
        super().__init__(message)
        self.code = code
        self.message_zh = message_zh

    @property
    def status(self) -> int:
        """The HTTP status this refusal is answered with."""
        return self.STATUS_OF.get(self.code, self.DEFAULT_STATUS)


class ApiError(FleetError):
    """A request the HTTP layer refuses itself (a bad window, a role without the right)."""

    def __init__(self, status: int, code: str, message: str, message_zh: str) -> None:
        super().__init__(code, message, message_zh)
        self._status = status

    @property
    def status(self) -> int:
        return self._status


class DatabaseError(FleetError):
    """The database cannot be reached or its schema cannot be brought up to date."""

    DEFAULT_STATUS = 503

    def __init__(self, message: str) -> None:
        super().__init__("DATABASE_UNAVAILABLE", message, "数据库暂时不可用")


class FieldCryptError(FleetError):
    """A key file that cannot be used, or an envelope that does not decrypt (and why)."""

    DEFAULT_STATUS = 500

    def __init__(self, message: str) -> None:
        super().__init__("FIELD_CRYPT", message, "加密字段无法处理")


class ImportRefused(FleetError):
    """The registry file as a whole cannot be read: wrong columns, not CSV, too big."""

    def __init__(self, message: str) -> None:
        super().__init__("BAD_CSV", message, f"CSV 文件无法导入：{message}")


class FiguresError(FleetError):
    """A figures request that cannot be answered: an empty window, a level that cannot slice."""

    def __init__(self, message: str) -> None:
        super().__init__("BAD_WINDOW", message, "时间窗口无效")


class TaskError(FleetError):
    """A task action that cannot be done: unknown task, or not in a state that allows it; a
    device that cannot be retired (unknown, or retired already)."""

    STATUS_OF: ClassVar[dict[str, int]] = {"TASK_NOT_FOUND": 404, "AGENT_NOT_FOUND": 404, "DEVICE_NOT_FOUND": 404}
    DEFAULT_STATUS = 409


class BindingError(FleetError):
    """A binding refused: the device or the merchant is not in the registry, or no binding."""

    STATUS_OF: ClassVar[dict[str, int]] = {"BINDING_NOT_FOUND": 404}


class LifecycleError(FleetError):
    """A lifecycle action refused: unknown device, merchant, store or agent; a stage that does not
    allow it; a merchant of another store; an install without its test announcement."""

    STATUS_OF: ClassVar[dict[str, int]] = {
        "DEVICE_NOT_FOUND": 404,
        "MERCHANT_NOT_FOUND": 404,
        "STORE_NOT_FOUND": 404,
        "AGENT_NOT_FOUND": 404,
    }
    DEFAULT_STATUS = 409


class RemoteError(FleetError):
    """A command or settings change that could not be sent."""

    STATUS_OF: ClassVar[dict[str, int]] = {"DEVICE_NOT_FOUND": 404, "COMMAND_NOT_FOUND": 404}
    DEFAULT_STATUS = 503


class NotifyError(FleetError):
    """A notification channel request refused: an unknown channel, a scope that names no store
    or field agent (or both), a webhook without a secret."""

    STATUS_OF: ClassVar[dict[str, int]] = {"CHANNEL_NOT_FOUND": 404}
    DEFAULT_STATUS = 422


class IdentityError(FleetError):
    """A provisioning or revocation request that cannot be done."""

    STATUS_OF: ClassVar[dict[str, int]] = {"NOT_PROVISIONED": 404}
    DEFAULT_STATUS = 409


class OtaError(FleetError):
    """A request the OTA store refuses."""

    STATUS_OF: ClassVar[dict[str, int]] = {
        "RELEASE_NOT_FOUND": 404,
        "CAMPAIGN_NOT_FOUND": 404,
        "RELEASE_EXISTS": 409,
        "CAMPAIGN_EXISTS": 409,
        "CAMPAIGN_ENDED": 409,
        "ARTIFACT_MISSING": 409,
    }


class AuthError(FleetError):
    """An account action refused, or a wrong login."""

    STATUS_OF: ClassVar[dict[str, int]] = {
        "BAD_LOGIN": 401,
        "USER_NOT_FOUND": 404,
        "LOGIN_TAKEN": 409,
        "USER_DISABLED": 403,
    }
