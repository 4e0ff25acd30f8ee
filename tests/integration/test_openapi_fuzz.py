"""Schema-driven fuzzing (schemathesis) of every operation in the OpenAPI documents of the fleet
server and the bridge, against the real server on the embedded broker and PostgreSQL: valid and
invalid requests generated from the schema, as an operations admin (the deepest reach). No
answer may be a 5xx, and the server keeps serving afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from firmware_protocols.signing import encode_public_key
from fleet_server.auth.roles import Role
from haodian.settings import Settings
from payment_bridge.keyring import PUBLIC_KEY_ID_PREFIX
from tests.integration.conftest import in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

# Generated requests per operation; the closing note counts from these.
EXAMPLES_PER_OPERATION = 30


async def test_no_request_from_either_openapi_document_gets_a_5xx(tmp_path, embedded_database, server_keys, unique):
    # Everything configured (release keys, both platforms' keys), so that a 503 "not
    # configured" cannot hide behind the fuzzing: every 5xx is a failure.
    keys = tmp_path / "keys"
    (keys / "wechatpay").mkdir(parents=True)
    (keys / "alipay.pem").write_bytes(_public_pem())
    (keys / "wechatpay" / f"{PUBLIC_KEY_ID_PREFIX}0111200000000000000000000000000009.pem").write_bytes(_public_pem())
    (keys / "apiv3.key").write_bytes(b"test-only-apiv3-key-0123456789ab")
    settings_ = Settings(
        data_dir=tmp_path,
        http_port=0,
        mqtt_client_prefix=f"t{unique}",
        login_attempts_per_min=10_000,
        notifications_per_s=10_000,
        ota_release_keys=[encode_public_key(Ed25519PrivateKey.generate().public_key())],
        alipay_public_key_file=keys / "alipay.pem",
        wechatpay_keys_dir=keys / "wechatpay",
        wechatpay_apiv3_key_file=keys / "apiv3.key",
    )
    async with in_process_stack(settings_, embedded_database, server_keys) as (_, server):
        loop = asyncio.get_running_loop()

        def fresh_token() -> str:
            # A new token per operation: a fuzzed logout or self-disable must not blind the rest.
            login = f"fuzz-{unique}-{next(serial)}"
            future = asyncio.run_coroutine_threadsafe(server.auth.service_token(login, Role.OPS_ADMIN), loop)
            return future.result(30)

        serial = iter(range(10**6))
        statuses, server_errors = await asyncio.to_thread(_fuzz, server.base_url, fresh_token)
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200
    assert server_errors == [], sorted({e.split(" {")[0] for e in server_errors})
    assert sum(statuses.values()) >= EXAMPLES_PER_OPERATION  # it did run
    summary = f"openapi fuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}"
    print(summary)  # noqa: T201 - the count the closing note reports (seen with pytest -s)


def _public_pem() -> bytes:
    """A platform public key standing in for Alipay's or WeChat Pay's (test-only, made now)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _fuzz(base_url: str, fresh_token: object) -> tuple[Counter[int], list[str]]:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        token = fresh_token()  # type: ignore[operator]
        strategy = st.one_of(operation.as_strategy(), operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

        _fuzz_operation(strategy, base_url, token, operation.label, statuses, server_errors)
    return statuses, server_errors


def _fuzz_operation(
    strategy: st.SearchStrategy[object],
    base_url: str,
    token: str,
    label: str,
    statuses: Counter[int],
    server_errors: list[str],
) -> None:
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def call(case: object) -> None:
        headers = {"authorization": f"Bearer {token}"}
        response = case.call(base_url=base_url, headers=headers, timeout=30)  # type: ignore[attr-defined]
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            server_errors.append(f"{label}: {response.status_code} {response.text[:200]}")

    call()
