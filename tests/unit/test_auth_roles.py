"""Roles, permissions and reach: the table every API route is checked against."""

from __future__ import annotations

import pytest

from fleet_server.auth.deps import within_reach
from fleet_server.auth.roles import COMMANDS_OF, ROLE_PERMISSIONS, Permission, Principal, Role


def principal(role: Role, **fields) -> Principal:
    return Principal(user_id=1, login="x", name="x", role=role, **fields)


def test_only_ops_admin_administers_and_only_ops_read_the_whole_fleet():
    assert {r for r, p in ROLE_PERMISSIONS.items() if Permission.USERS_ADMIN in p} == {Role.OPS_ADMIN}
    assert {r for r, p in ROLE_PERMISSIONS.items() if Permission.FLEET_READ in p} == {Role.OPS_ADMIN, Role.OPS_VIEWER}
    writes = {Permission.OTA_WRITE, Permission.REGISTRY_WRITE, Permission.TASK_ASSIGN, Permission.BINDING_WRITE}
    assert not ROLE_PERMISSIONS[Role.OPS_VIEWER] & writes
    assert not ROLE_PERMISSIONS[Role.OPS_VIEWER] & {Permission.DEVICE_COMMAND, Permission.DEVICE_SETTINGS}


def test_commands_by_role():
    assert COMMANDS_OF[Role.FIELD_AGENT] == {"diagnose", "test_announce", "reboot"}
    assert COMMANDS_OF[Role.MERCHANT] == {"test_announce"}
    assert not principal(Role.OPS_VIEWER).may_command("reboot")
    assert not principal(Role.MERCHANT).may_command("reboot")


@pytest.mark.parametrize(
    ("who", "store", "merchant", "expected"),
    [
        (principal(Role.OPS_VIEWER), None, None, True),
        (principal(Role.BACKEND), "S2", "M2", True),
        (principal(Role.FIELD_AGENT, stores=frozenset({"S1"})), "S1", "M9", True),
        (principal(Role.FIELD_AGENT, stores=frozenset({"S1"})), "S2", "M9", False),
        (principal(Role.FIELD_AGENT, stores=frozenset({"S1"})), None, None, False),
        (principal(Role.MERCHANT, merchant_id="M1"), "S1", "M1", True),
        (principal(Role.MERCHANT, merchant_id="M1"), "S1", "M2", False),
        (principal(Role.MERCHANT, merchant_id="M1"), "S1", None, False),  # an unbound device is nobody's
        # A merchant's reach is their merchant, never a store, whatever else the account holds.
        (principal(Role.MERCHANT, merchant_id="M1", stores=frozenset({"S1"})), "S1", "M2", False),
    ],
)
def test_reach(who, store, merchant, expected):
    assert within_reach(who, store_id=store, merchant_id=merchant) is expected
