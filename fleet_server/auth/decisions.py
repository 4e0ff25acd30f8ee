"""Who may call each operation of the HTTP API: one decision per role for every operation of both
OpenAPI documents (the fleet server's and the payment bridge's), kept beside the roles
(`roles.py`).

The routes enforce it with their permission (`deps.require`) and their reach (`deps.Reach`, one
rule per kind of record in `db.hierarchy`); this table says what that must come to, and
`tests/integration/test_access_table.py` calls every operation as every role, and with five
bad tokens, on a world of two stores, two merchants and a device that moved between them, and
checks the answers against it. An operation missing here fails that test.

    ALL     every signed-in account (its own session: who am I, sign out)
    YES     the role may, on anything the operation names
    OWN     the role may, on what is within its reach only: a field agent's stores' devices and
            tasks, a merchant's own devices and payments, and of a device that moved, only what
            was made in their period; one outside it answers 403 OUT_OF_REACH, and lists leave it out
    NO      the role may not: 403 FORBIDDEN
    PUBLIC  no sign-in: the caller proves itself otherwise (a payment platform's signature; an
            artifact's SHA-256 in its name; a password) or nothing is told (health)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from fleet_server.auth.roles import Role


class Decision(StrEnum):
    ALL = "all"
    YES = "yes"
    OWN = "own"
    NO = "no"
    PUBLIC = "public"


ALL, YES, OWN, NO, PUBLIC = Decision.ALL, Decision.YES, Decision.OWN, Decision.NO, Decision.PUBLIC

# The columns of the table, in order.
COLUMNS: Final = (Role.OPS_ADMIN, Role.OPS_VIEWER, Role.FIELD_AGENT, Role.MERCHANT, Role.BACKEND)

_TABLE: Final[dict[str, tuple[Decision, ...]]] = {
    #                                                      ops-admin viewer  agent  merchant backend
    # sign-in and accounts
    "POST /api/v1/auth/login": (PUBLIC,) * 5,
    "POST /api/v1/auth/logout": (ALL,) * 5,
    "GET /api/v1/auth/me": (ALL,) * 5,
    "GET /api/v1/users": (YES, NO, NO, NO, NO),
    "POST /api/v1/users": (YES, NO, NO, NO, NO),
    "PATCH /api/v1/users/{login}": (YES, NO, NO, NO, NO),
    "POST /api/v1/users/{login}/tokens": (YES, NO, NO, NO, NO),
    "GET /api/v1/audit": (YES, NO, NO, NO, NO),
    # devices and what was made on them
    "GET /api/v1/devices": (YES, YES, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}": (YES, YES, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}/timeline": (YES, YES, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}/announcements": (YES, YES, OWN, OWN, NO),
    "POST /api/v1/devices/{device_id}/commands": (YES, NO, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}/commands": (YES, YES, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}/commands/{command_id}": (YES, YES, OWN, OWN, NO),
    "GET /api/v1/devices/{device_id}/settings": (YES, YES, OWN, OWN, NO),
    "PUT /api/v1/devices/{device_id}/settings": (YES, NO, NO, OWN, NO),
    # the fleet's figures
    "GET /api/v1/figures": (YES, YES, NO, NO, NO),
    "GET /api/v1/figures.csv": (YES, YES, NO, NO, NO),
    "GET /api/v1/figures/trend": (YES, YES, NO, NO, NO),
    "POST /api/v1/figures/recompute": (YES, NO, NO, NO, NO),
    "GET /api/v1/fleet/summary": (YES, YES, NO, NO, NO),
    "GET /api/v1/alerts": (YES, YES, NO, NO, NO),
    "GET /metrics": (YES, YES, NO, NO, NO),
    # field agents' tasks
    "GET /api/v1/tasks": (YES, YES, OWN, NO, NO),
    "GET /api/v1/tasks/{task_id}": (YES, YES, OWN, NO, NO),
    "POST /api/v1/tasks/{task_id}/assign": (YES, NO, NO, NO, NO),
    "POST /api/v1/tasks/{task_id}/start": (YES, NO, OWN, NO, NO),
    "POST /api/v1/tasks/{task_id}/close": (YES, NO, OWN, NO, NO),
    "POST /api/v1/tasks/{task_id}/cancel": (YES, NO, OWN, NO, NO),
    "GET /api/v1/tasks/{task_id}/site": (YES, YES, OWN, NO, NO),
    "POST /api/v1/tasks/{task_id}/call": (YES, NO, OWN, NO, NO),
    "POST /api/v1/tasks/{task_id}/notes": (YES, NO, OWN, NO, NO),
    # the registry and device credentials
    "POST /api/v1/registry/import": (YES, NO, NO, NO, NO),
    "GET /api/v1/registry/merchants": (YES, YES, NO, NO, NO),
    "GET /api/v1/registry/agents": (YES, YES, NO, NO, NO),
    "POST /api/v1/registry/devices/{device_id}/credentials": (YES, NO, NO, NO, NO),
    "GET /api/v1/registry/devices/{device_id}/credentials": (YES, YES, NO, NO, NO),
    "POST /api/v1/registry/devices/{device_id}/credentials/revoke": (YES, NO, NO, NO, NO),
    "POST /api/v1/registry/devices/{device_id}/retire": (YES, NO, NO, NO, NO),
    # the device lifecycle
    "GET /api/v1/lifecycle/devices/{key}": (YES, YES, OWN, NO, NO),
    "GET /api/v1/lifecycle/devices/{device_id}/history": (YES, YES, OWN, NO, NO),
    "GET /api/v1/lifecycle/counts": (YES, YES, NO, NO, NO),
    "GET /api/v1/lifecycle/merchants": (YES, YES, OWN, NO, NO),
    "POST /api/v1/lifecycle/stock": (YES, NO, NO, NO, NO),
    "POST /api/v1/lifecycle/allocate": (YES, NO, NO, NO, NO),
    "POST /api/v1/lifecycle/devices/{key}/install": (YES, NO, OWN, NO, NO),
    "POST /api/v1/lifecycle/devices/{device_id}/commission": (YES, NO, OWN, NO, NO),
    "POST /api/v1/lifecycle/devices/{device_id}/return": (YES, NO, OWN, NO, NO),
    "POST /api/v1/lifecycle/devices/{device_id}/swap": (YES, NO, OWN, NO, NO),
    "POST /api/v1/lifecycle/devices/{device_id}/{action}": (YES, NO, NO, NO, NO),
    # OTA
    "GET /api/v1/ota/releases": (YES, YES, NO, NO, NO),
    "POST /api/v1/ota/releases": (YES, NO, NO, NO, NO),
    "PUT /api/v1/ota/releases/{name}/{version}/artifact": (YES, NO, NO, NO, NO),
    "GET /api/v1/ota/campaigns": (YES, YES, NO, NO, NO),
    "POST /api/v1/ota/campaigns": (YES, NO, NO, NO, NO),
    "GET /api/v1/ota/campaigns/{campaign_id}": (YES, YES, NO, NO, NO),
    "POST /api/v1/ota/campaigns/{campaign_id}/{action}": (YES, NO, NO, NO, NO),
    "GET /ota/artifacts/{sha256}": (PUBLIC,) * 5,
    # the quarantine
    "GET /api/v1/quarantine/summary": (YES, YES, NO, NO, NO),
    "GET /api/v1/quarantine": (YES, NO, NO, NO, NO),
    "GET /api/v1/quarantine/{held_id}": (YES, NO, NO, NO, NO),
    "DELETE /api/v1/quarantine": (YES, NO, NO, NO, NO),
    # notification channels
    "GET /api/v1/notify/channels": (YES, YES, NO, NO, NO),
    "POST /api/v1/notify/channels": (YES, NO, NO, NO, NO),
    "DELETE /api/v1/notify/channels/{channel_id}": (YES, NO, NO, NO, NO),
    "POST /api/v1/notify/channels/{channel_id}/test": (YES, NO, NO, NO, NO),
    # the telemetry storage and its jobs
    "GET /api/v1/storage": (YES, YES, NO, NO, NO),
    # the payment bridge
    "POST /api/v1/notifications/backend": (PUBLIC,) * 5,
    "POST /api/v1/notifications/alipay": (PUBLIC,) * 5,
    "POST /api/v1/notifications/wechatpay": (PUBLIC,) * 5,
    "POST /api/v1/notifications/unionpay": (PUBLIC,) * 5,
    "GET /api/v1/payments/not-announced": (YES, YES, NO, OWN, YES),
    "GET /api/v1/payments/{payment_id}": (YES, YES, NO, OWN, YES),
    "GET /api/v1/deliveries/summary": (YES, YES, NO, OWN, YES),
    "POST /api/v1/bindings": (YES, NO, NO, NO, YES),
    "GET /api/v1/bindings": (YES, NO, NO, NO, YES),
    "DELETE /api/v1/bindings/{device_id}": (YES, NO, NO, NO, YES),
    # health, for load balancers; the signed time, for devices that cannot connect yet
    "GET /healthz": (PUBLIC,) * 5,
    "GET /api/v1/time": (PUBLIC,) * 5,
}

DECISIONS: Final[dict[str, dict[Role, Decision]]] = {
    operation: dict(zip(COLUMNS, row, strict=True)) for operation, row in _TABLE.items()
}


def decision(operation: str, role: Role) -> Decision:
    """What `role` may do with `operation` ("METHOD /path" as in the OpenAPI document)."""
    return DECISIONS[operation][role]
