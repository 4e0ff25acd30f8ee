"""The notification doors answer the same through the server's lean way in (`doorway.NotificationDoors`,
what a platform reaches over HTTP) as through the framework's routes (what the OpenAPI spec
documents and the ASGI tests call): the same status, type and body, for each door's acceptance,
repeat and refusals; the rest of the API is untouched by the lean way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from haodian.settings import Settings
from payment_bridge import rsa2
from payment_bridge.notifications import MAX_BODY_BYTES, SIGNATURE_HEADER
from simulators.backend import PaymentBackend
from simulators.registry import register
from tests.integration.conftest import in_process_stack

pytestmark = [pytest.mark.anyio, pytest.mark.integration]

PATH = "/api/v1/notifications/backend"


@pytest.fixture
async def both(tmp_path, embedded_database, server_keys, unique) -> AsyncIterator[tuple]:
    """(the server, a client over HTTP, a client of the app itself)."""
    settings = Settings(data_dir=tmp_path, http_port=0, mqtt_client_prefix=f"door{unique}")
    async with (
        in_process_stack(settings, embedded_database, server_keys) as (_, server),
        httpx.AsyncClient(base_url=server.base_url) as wire,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app), base_url="http://app") as app,
    ):
        yield server, wire, app


def _seen(answer: httpx.Response) -> tuple[int, str | None, bytes]:
    return answer.status_code, answer.headers.get("content-type"), answer.content


async def test_every_door_answers_alike_on_the_lean_way_and_through_the_framework(both, backend_key, unique):
    server, wire, app = both
    merchant = f"M{unique}"
    await register(server.pool, devices=[f"D{unique}"], merchants=[merchant])
    backend = PaymentBackend(backend_key, server.base_url, [merchant], seed=3)
    body, headers = backend.notification(merchant_id=merchant)
    path = "/api/v1/notifications/backend"

    first = await wire.post(path, content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    repeated = [_seen(await client.post(path, content=body, headers=headers)) for client in (app, wire)]
    assert repeated[0] == repeated[1]
    assert repeated[0][0] == 200
    assert b'"duplicate":true' in repeated[0][2]

    forged = body.replace(b'"amount": "', b'"amount": "9')
    assert forged != body
    too_large = body[:-1] + b', "pad": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'
    requests = [
        (path, forged, headers),  # 401 SIGNATURE_INVALID
        (path, body, {k: v for k, v in headers.items() if "signature" not in k.lower()}),  # 401 SIGNATURE_MISSING
        (path, too_large, headers),  # 413
        (path, b"{", {**headers, "X-Haodian-Sign-Type": "MD5"}),  # 400
        # No platform keys on this server: each platform's door refuses in its own terms (503;
        # UnionPay's carries its certificate, and this one carries no signature: 401).
        ("/api/v1/notifications/alipay", b"notify_id=1&sign=x", {"content-type": "application/x-www-form-urlencoded"}),
        ("/api/v1/notifications/unionpay", b"version=5.1.0", {"content-type": "application/x-www-form-urlencoded"}),
        ("/api/v1/notifications/wechatpay", b'{"id":"1"}', {"content-type": "application/json"}),
    ]
    for where, content, given in requests:
        lean, framework = [_seen(await client.post(where, content=content, headers=given)) for client in (wire, app)]
        assert lean == framework, where
        assert lean[0] >= 400, (where, lean)
    statuses = [_seen(await wire.post(w, content=c, headers=g))[0] for w, c, g in requests]
    assert statuses == [401, 401, 413, 400, 503, 401, 503]
    # Not a notification: the app answers as ever, through whichever way.
    for client in (wire, app):
        assert (await client.get(path)).status_code == 405
        assert (await client.get("/healthz")).json()["status"] == "ok"
    async with server.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM payments WHERE payment_id = %s", (first.json()["payment_id"],))
        assert await cur.fetchone() == (1,)


async def test_a_notification_no_store_can_hold_is_refused_alone(both, backend_key, unique):
    """Valid JSON, signed by the backend, with a NUL inside: refused as invalid, recorded as
    refused; the notifications beside it are recorded as ever (they may share its batch)."""
    server, wire, _ = both
    merchant = f"M{unique}"
    await register(server.pool, devices=[f"D{unique}"], merchants=[merchant])
    backend = PaymentBackend(backend_key, server.base_url, [merchant], seed=5)
    good = [backend.notification(merchant_id=merchant) for _ in range(5)]  # the first three spoiled below
    poisons = []
    for n, tail in enumerate((b', "note": "a\\u0000b"}', b', "note": "\\ud800"}', b', "note": "a\x00b"}')):
        body = good[n][0][:-1] + tail  # an escaped NUL, a lone surrogate, a raw NUL byte
        poisons.append((body, {**good[n][1], SIGNATURE_HEADER: rsa2.sign(backend_key, body)}))
    sent = [*poisons, *good[3:]]
    answers = await asyncio.gather(*[wire.post(PATH, content=b, headers=h) for b, h in sent])
    assert [a.status_code for a in answers] == [400, 400, 400, 200, 200], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers[:3]} == {"NOTIFICATION_INVALID"}
    async with server.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM rejected_notifications WHERE code = 'NOTIFICATION_INVALID'")
        assert await cur.fetchone() == (3,)


async def test_a_body_sent_in_chunks_or_after_100_continue_is_read_whole(both, backend_key, unique):
    """What real senders' HTTP clients do and our simulator does not: a chunked body with no
    Content-Length (streaming clients), and `Expect: 100-continue` before the body (curl and
    Java's HTTP clients do it for larger bodies)."""
    server, wire, _ = both
    merchant = f"M{unique}"
    await register(server.pool, devices=[f"D{unique}"], merchants=[merchant])
    backend = PaymentBackend(backend_key, server.base_url, [merchant], seed=9)
    body, headers = backend.notification(merchant_id=merchant)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    chunked = await wire.post(PATH, content=chunks(), headers=headers)
    assert chunked.status_code == 200, chunked.text
    assert chunked.json()["duplicate"] is False

    body, headers = backend.notification(merchant_id=merchant)
    host, port = server.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        f"POST {PATH} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Length: {len(body)}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100")
    await asyncio.wait_for(reader.readline(), 10)  # the blank line after the interim answer
    writer.write(body)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    assert status.startswith(b"HTTP/1.1 200"), status
