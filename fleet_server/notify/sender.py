"""The notifier: sends what the outbox holds, each message until its receiver takes it.

Each round (`run_once`, every `poll_s` in the running server) claims the rows that are due,
`FOR UPDATE SKIP LOCKED` with a lease, so several fleet processes share the outbox and none sends
what another is sending; it sends them and marks each sent, or due again after a backoff that
doubles from 2 s to 5 min, until `give_up_after` has passed since it was queued (then it is
given up, with the last error, and shown on the ops page). A channel never gets more than its
`per_minute` (the robots allow 20): the rest wait for the next minute.

Delivery is at least once: a process killed between a receiver's answer and its mark sends that
message again. The webhook's `X-Haodian-Delivery` header is the same on every try, so a receiver
can drop a repeat; the robots have no such key.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import structlog
from psycopg_pool import AsyncConnectionPool

from fleet_server.contacts.cipher import FieldCipher
from fleet_server.errors import FieldCryptError
from fleet_server.notify.channels import context
from fleet_server.notify.formats import ChannelKind, Notice, refusal, request
from mqtt_link.tasks import Component, spawn

log = structlog.get_logger(__name__)

# Due rows, claimed with a lease: (now, lease end, limit). Rows: (notice, channel, kind, target,
# secret, notice json, created, attempts, per_minute).
CLAIM: Final = """
WITH due AS (
    SELECT o.notice_id FROM notify_outbox o JOIN notify_channels c USING (channel_id)
    WHERE o.sent_at IS NULL AND o.gave_up_at IS NULL AND o.next_attempt_at <= %s AND c.enabled
    ORDER BY o.next_attempt_at, o.notice_id LIMIT %s FOR UPDATE OF o SKIP LOCKED
)
UPDATE notify_outbox o SET next_attempt_at = %s, attempts = o.attempts + 1
FROM due, notify_channels c
WHERE o.notice_id = due.notice_id AND c.channel_id = o.channel_id
RETURNING o.notice_id, o.channel_id, c.kind, c.target, c.secret, o.notice, o.created_at, o.attempts, c.per_minute
"""
SENT_LAST_MINUTE: Final = (
    "SELECT channel_id, count(*) FROM notify_outbox WHERE channel_id = ANY(%s) AND sent_at > %s GROUP BY 1"
)
MARK_SENT: Final = "UPDATE notify_outbox SET sent_at = %s, last_error = NULL WHERE notice_id = %s"
RETRY: Final = "UPDATE notify_outbox SET next_attempt_at = %s, last_error = %s WHERE notice_id = %s"
GIVE_UP: Final = "UPDATE notify_outbox SET gave_up_at = %s, last_error = %s WHERE notice_id = %s"
# Over the channel's minute: due again then, and that was no attempt.
DEFER: Final = "UPDATE notify_outbox SET next_attempt_at = %s, attempts = attempts - 1 WHERE notice_id = %s"

LEASE: Final = timedelta(seconds=60)
BACKOFF_FIRST_S: Final = 2.0
BACKOFF_MAX_S: Final = 300.0


@dataclass(slots=True)
class SendReport:
    sent: int = 0
    failed: int = 0  # tried and due again
    given_up: int = 0
    deferred: int = 0  # over the channel's minute
    errors: list[str] = field(default_factory=list)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(attempts - 1, 0)))


class Notifier(Component):
    def __init__(
        self,
        pool: AsyncConnectionPool,
        cipher: FieldCipher,
        *,
        base_url: str,
        poll_s: float = 1.0,
        batch: int = 50,
        timeout_s: float = 5.0,
        give_up_after: timedelta = timedelta(hours=24),
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`base_url`: the server's address as people reach it, for the task links."""
        self._pool = pool
        self._cipher = cipher
        self.base_url = base_url
        self._poll_s = poll_s
        self._batch = batch
        self._give_up_after = give_up_after
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self._wake = asyncio.Event()

    async def _start(self, stack: AsyncExitStack) -> None:
        stack.push_async_callback(self._client.aclose)
        spawn(stack, self._loop(), name="notifier")

    def wake(self) -> None:
        """Send now rather than at the next poll (something was queued in this process)."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once(datetime.now(tz=UTC))
            except Exception as exc:  # noqa: BLE001 - a round that failed is retried next round
                log.error("notifier round failed", error=str(exc))  # noqa: TRY400
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_s)
            self._wake.clear()

    async def run_once(self, now: datetime) -> SendReport:
        report = SendReport()
        async with self._pool.connection() as conn:
            claimed = await (await conn.execute(CLAIM, (now, self._batch, now + LEASE))).fetchall()
            if not claimed:
                return report
            cur = await conn.execute(SENT_LAST_MINUTE, (sorted({r[1] for r in claimed}), now - timedelta(minutes=1)))
            room = defaultdict(int, {channel: -n for channel, n in await cur.fetchall()})
        outcomes: list[tuple[str, tuple[object, ...]]] = []
        for row in claimed:
            notice_id, channel_id, per_minute = row[0], row[1], row[8]
            if room[channel_id] + per_minute <= 0:
                outcomes.append((DEFER, (now + timedelta(seconds=15), notice_id)))
                report.deferred += 1
                continue
            room[channel_id] -= 1
            error = await self._send(row, now)
            outcomes.append(self._outcome(row, error, now, report))
        async with self._pool.connection() as conn, conn.transaction():
            for statement, params in outcomes:
                await conn.execute(statement, params)
        return report

    async def _send(self, row: tuple[Any, ...], now: datetime) -> str | None:
        notice_id, channel_id, kind, target, secret, notice = row[:6]
        try:
            url = self._cipher.decrypt(target, context=context(channel_id, "target"))
            key = self._cipher.decrypt(secret, context=context(channel_id, "secret")) if secret else None
        except FieldCryptError as exc:
            return str(exc)
        kind = ChannelKind(kind)
        req = request(
            kind,
            url,
            key,
            Notice.model_validate(notice),
            base_url=self.base_url,
            now_ms=int(now.timestamp() * 1000),
            delivery=f"hd-{notice_id}",
        )
        try:
            answer = await self._client.post(req.url, content=req.body, headers=req.headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        return refusal(kind, answer.status_code, answer.content)

    def _outcome(
        self, row: tuple[Any, ...], error: str | None, now: datetime, report: SendReport
    ) -> tuple[str, tuple[object, ...]]:
        notice_id, channel_id, created, attempts = row[0], row[1], row[6], row[7]
        if error is None:
            report.sent += 1
            return MARK_SENT, (now, notice_id)
        report.errors.append(error)
        if now - created >= self._give_up_after:
            report.given_up += 1
            log.error("notification given up", notice_id=notice_id, channel_id=channel_id, error=error)
            return GIVE_UP, (now, error, notice_id)
        report.failed += 1
        log.warning("notification not taken; retrying", notice_id=notice_id, channel_id=channel_id, error=error)
        return RETRY, (now + backoff(attempts), error[:500], notice_id)
