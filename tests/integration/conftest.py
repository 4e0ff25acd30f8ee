from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.hardware.audio import MemorySink, Rendered
from edge_agent.hardware.modem import SimulatedModem
from edge_agent.voice import ClipSpeaker, VoicePack
from firmware_protocols.messages import Announce
from firmware_protocols.signing import Signer
from fleet_server.auth.roles import Role
from fleet_server.contacts.cipher import FieldKeys
from haodian.embedded import EmbeddedBroker
from haodian.keys import ServerKeys
from haodian.server import Part, ServerStack
from haodian.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def backend_key() -> rsa.RSAPrivateKey:
    """The simulated payment backend's RSA key: generated per test session, test-only."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def server_keys(backend_key) -> ServerKeys:
    return ServerKeys(
        signing_key=Ed25519PrivateKey.generate(),
        backend_public_key=backend_key.public_key(),
        device_master_key=os.urandom(32),  # test-only, made per session
        field_keys=FieldKeys.generate(),
    )


def announced(sink: MemorySink) -> list[Rendered]:
    """What a speaker played for payments and refunds: not the binding's alerts (设备绑定成功 /
    设备已解绑, which `test_bindings` holds to their own account)."""
    return [r for r in sink.played if not r.name.startswith("alert:")]


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 20.0, what: str = "condition") -> None:
    """Wait until `check()` is true; fail with `what` after `timeout_s` (a bound, not a speed claim)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def signed_announce(
    signer: Signer, device_id: str, payment_id: str, *, ttl_s: int = 60, amount_fen: int = 1250
) -> Announce:
    """A WeChat payment announce for `device_id`, issued now and signed by `signer`."""
    now = time.time_ns() // 1_000_000
    return signer.sign(
        Announce(
            device_id=device_id,
            ts=now,
            payment_id=payment_id,
            amount_fen=amount_fen,
            channel="wechat",
            paid_at=now,
            issued_at=now,
            ttl_s=ttl_s,
            key_id=signer.key_id,
        )
    )


def agent_for(device_id, broker, server_keys, tmp_path, sink):
    config = AgentConfig(
        device_id=device_id,
        broker_url=broker.endpoint.url(),
        state_dir=tmp_path / device_id,
        server_keys=[server_keys.server_public_key_b64],
        health_interval_s=0.5,
    )
    return EdgeAgent(config, speaker=ClipSpeaker(VoicePack.builtin(), sink), modem=SimulatedModem(seed=1))


@asynccontextmanager
async def in_process_stack(settings: Settings, database_url: str, server_keys: ServerKeys) -> AsyncIterator[tuple]:
    """The embedded broker, and the fleet server and bridge in this process; yields (broker, server)."""
    async with AsyncExitStack() as exits:
        broker = await exits.enter_async_context(EmbeddedBroker())
        server = await exits.enter_async_context(
            ServerStack(
                settings,
                parts={Part.FLEET, Part.BRIDGE},
                endpoint=broker.endpoint,
                database_url=database_url,
                keys=server_keys,
            )
        )
        yield broker, server


async def api_client(
    server: ServerStack, role: Role = Role.OPS_ADMIN, *, verify: ssl.SSLContext | bool = True, **account: object
) -> httpx.AsyncClient:
    """An HTTP client of `server` signed in with an API token of a service account in `role`
    (one account per role and fields, made on first use); `verify`: the CA of an HTTPS server."""
    login = f"test-{role.value}-{hashlib.sha256(repr(sorted(account.items())).encode()).hexdigest()[:8]}"
    token = await server.auth.service_token(login, role, **account)
    return httpx.AsyncClient(base_url=server.base_url, headers={"authorization": f"Bearer {token}"}, verify=verify)
