"""Telling the payment backend about payments its merchant did not hear.

    async with WebhookSender(pool, url, signer) as sender: ...

The store queues a `not_announced` event (table `payment_events`) in the same transaction that
concludes it: a payment with no bound device, or one whose every delivery ended without being
played (missed its TTL, expired, refused, failed). This loop posts each event to the backend:

    POST {url}
    Content-Type: application/json
    X-Haodian-Key-Id: <the server key's id>
    X-Haodian-Signature: base64(Ed25519(body))

    {"event": "payment.not_announced", "payment_id": "...", "merchant_id": "...",
     "platform_merchant_id": null, "amount_fen": 1250, "channel": "wechat", "paid_at": "...",
     "reason": "missed"}

(`merchant_id` null, reason `unknown_merchant`: no merchant of ours is known for the platform's
`platform_merchant_id`; the platform was told success, nothing is announced.)

until the backend answers 2xx, with a growing delay between tries (capped at 5 minutes). A batch
is claimed with `FOR UPDATE SKIP LOCKED` and a lease on its next attempt, so several bridge
processes share the outbox and each event is sent by one of them at a time, and no database
connection is held while the backend answers; delivery is at least once (the backend dedups by
`payment_id`).
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from psycopg_pool import AsyncConnectionPool

from firmware_protocols.signing import Signer
from fleet_server.db.fetch import execute, fetch_dicts
from mqtt_link.tasks import Component, spawn
from payment_bridge import queries

log = structlog.get_logger(__name__)

SCAN_S = 1.0
BATCH = 50
MAX_DELAY_S = 300.0
REQUEST_TIMEOUT_S = 10.0
# A claimed batch is not claimed again for this long: longer than its requests can take.
LEASE_S = 3 * REQUEST_TIMEOUT_S
KEY_ID_HEADER = "X-Haodian-Key-Id"
SIGNATURE_HEADER = "X-Haodian-Signature"


def retry_delay(attempts: int) -> timedelta:
    """2 s after the first failure, doubling, at most 5 minutes."""
    return timedelta(seconds=min(MAX_DELAY_S, 2.0 * 2 ** max(0, attempts - 1)))


class WebhookSender(Component):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        url: str,
        signer: Signer,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        scan_s: float = SCAN_S,
    ) -> None:
        self._pool = pool
        self._url = url
        self._signer = signer
        self._scan_s = scan_s
        self._client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, transport=transport)
        self.sent = 0
        self.failures = 0

    async def _start(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self._client.aclose)
        spawn(stack, self._loop(), name="bridge-webhook")

    async def _loop(self) -> None:
        while True:
            try:
                while await self.send_due() == BATCH:
                    pass  # a full batch: there may be more waiting
            except Exception:
                # A database blip must not end the webhook for good; the next scan tries again.
                log.exception("webhook scan failed")
            await asyncio.sleep(self._scan_s)

    async def send_due(self) -> int:
        """Send the events that are due (one batch, concurrently); returns how many were tried.

        The batch is claimed in a short transaction that pushes its next attempt a lease ahead
        (another bridge skips it meanwhile), then sent with no database connection held, then
        each outcome written back."""
        claimed = await fetch_dicts(self._pool, queries.CLAIM_EVENTS, (LEASE_S, BATCH))
        await asyncio.gather(*(self._send(event) for event in claimed))
        return len(claimed)

    async def _send(self, event: dict[str, Any]) -> None:
        """Post one claimed event and write back how it went."""
        body = json.dumps(
            {
                "event": f"payment.{event['event']}",
                "payment_id": event["payment_id"],
                "merchant_id": event["merchant_id"],  # None: no merchant of ours (reason unknown_merchant)
                "platform_merchant_id": event["platform_merchant_id"],
                "amount_fen": event["amount_fen"],
                "channel": event["channel"],
                "paid_at": event["paid_at"].isoformat(),
                "reason": event["reason"],
            },
            ensure_ascii=False,
        ).encode()
        error = await self._post(body)
        async with self._pool.connection() as conn:
            if error is None:
                self.sent += 1
                await execute(conn, queries.EVENT_DELIVERED, (event["id"],))
                return
            self.failures += 1
            delay = retry_delay(event["attempts"] + 1)
            log.warning(
                "webhook not delivered; will retry", payment_id=event["payment_id"], error=error, retry_in=str(delay)
            )
            await execute(conn, queries.EVENT_RETRY, (error[:500], datetime.now(tz=UTC) + delay, event["id"]))

    async def _post(self, body: bytes) -> str | None:
        """POST one event; None when the backend took it, else why not."""
        headers = {
            "content-type": "application/json",
            KEY_ID_HEADER: self._signer.key_id,
            SIGNATURE_HEADER: self._signer.signature_of(body),
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"
