"""Roles and what each may do; a principal is a signed-in account with its reach.

    ops-admin    everything, including users and the audit log
    ops-viewer   reads the whole fleet; changes nothing
    field-agent  the devices and tasks of the stores assigned; diagnostics, test announcement,
                 reboot; starts and closes tasks; installs, returns and swaps devices
    merchant     their own devices: settings, a test announcement, recent announcements
    backend      the payment backend's service account: bindings, payments, delivery figures

Permissions are checked in the API (`fleet_server.auth.deps`); a device, payment, task or
command outside a principal's reach answers 403, whatever the page shows. What each role may do
with each operation is the table beside this one, `decisions.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Role(StrEnum):
    OPS_ADMIN = "ops-admin"
    OPS_VIEWER = "ops-viewer"
    FIELD_AGENT = "field-agent"
    MERCHANT = "merchant"
    BACKEND = "backend"


class Permission(StrEnum):
    FLEET_READ = "fleet.read"  # figures, summaries, alerts, every device
    DEVICE_READ = "device.read"  # devices within reach
    DEVICE_COMMAND = "device.command"  # remote commands on devices within reach (which: COMMANDS_OF)
    DEVICE_SETTINGS = "device.settings"  # the merchant's settings of devices within reach
    TASK_READ = "task.read"
    TASK_WORK = "task.work"  # start and close tasks within reach
    TASK_ASSIGN = "task.assign"
    REGISTRY_WRITE = "registry.write"
    OTA_READ = "ota.read"
    OTA_WRITE = "ota.write"
    PAYMENT_READ = "payment.read"  # payments and deliveries within reach
    BINDING_WRITE = "binding.write"
    USERS_ADMIN = "users.admin"
    AUDIT_READ = "audit.read"
    QUARANTINE_ADMIN = "quarantine.admin"  # read held messages (raw payloads) and purge them
    FIGURES_REBUILD = "figures.rebuild"  # rebuild the figure rollups from raw history
    NOTIFY_ADMIN = "notify.admin"  # add, remove and test notification channels
    DEVICE_INSTALL = "device.install"  # install, commission, return and swap devices within reach
    LIFECYCLE_READ = "lifecycle.read"  # devices' stages and the merchants to install for, within reach


_READ_ALL: Final = {
    Permission.FLEET_READ,
    Permission.DEVICE_READ,
    Permission.TASK_READ,
    Permission.OTA_READ,
    Permission.PAYMENT_READ,
    Permission.LIFECYCLE_READ,
}
ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    Role.OPS_ADMIN: frozenset(Permission),
    Role.OPS_VIEWER: frozenset(_READ_ALL),
    Role.FIELD_AGENT: frozenset(
        {
            Permission.DEVICE_READ,
            Permission.DEVICE_COMMAND,
            Permission.DEVICE_INSTALL,
            Permission.LIFECYCLE_READ,
            Permission.TASK_READ,
            Permission.TASK_WORK,
        }
    ),
    Role.MERCHANT: frozenset(
        {Permission.DEVICE_READ, Permission.DEVICE_COMMAND, Permission.DEVICE_SETTINGS, Permission.PAYMENT_READ}
    ),
    # Bindings, payments and delivery figures only: not the devices' timelines, commands or settings.
    Role.BACKEND: frozenset({Permission.BINDING_WRITE, Permission.PAYMENT_READ}),
}
# The remote commands each role may send; the device refuses anything else it does not know.
COMMANDS_OF: Final[dict[Role, frozenset[str]]] = {
    Role.OPS_ADMIN: frozenset({"diagnose", "test_announce", "reboot", "fetch_log", "set_volume", "set_config"}),
    Role.FIELD_AGENT: frozenset({"diagnose", "test_announce", "reboot"}),
    Role.MERCHANT: frozenset({"test_announce"}),
}
ROLE_NAMES_ZH: Final = {
    Role.OPS_ADMIN: "运营管理员",
    Role.OPS_VIEWER: "运营查看",
    Role.FIELD_AGENT: "经纪人",
    Role.MERCHANT: "商户",
    Role.BACKEND: "支付后台",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in account, as a request sees it."""

    user_id: int
    login: str
    name: str
    role: Role
    merchant_id: str | None = None
    agent_id: str | None = None
    stores: frozenset[str] = frozenset()
    csrf: str = ""
    via_cookie: bool = False

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]

    @property
    def sees_whole_fleet(self) -> bool:
        """Ops and the backend reach every device; field agents and merchants only their own."""
        return self.role in (Role.OPS_ADMIN, Role.OPS_VIEWER, Role.BACKEND)

    def reach(self) -> tuple[frozenset[str] | None, str | None]:
        """What the devices within reach are: (stores, merchant id), None meaning no limit on
        that side; (None, None) is the whole fleet. Lists filter by it in SQL; `within_reach`
        checks one device against it."""
        if self.sees_whole_fleet:
            return None, None
        if self.role is Role.MERCHANT:
            return None, self.merchant_id or ""  # a merchant account always names one; "" matches none
        return self.stores, None

    def may_command(self, name: str) -> bool:
        return name in COMMANDS_OF.get(self.role, frozenset())
