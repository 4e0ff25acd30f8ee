"""A payment backend that sends correctly signed notifications to the bridge.

Amounts follow what a community shop sees: mostly small (median around 15 元), a long tail up
to a few hundred, some whole amounts; channels split roughly as WeChat 50 %, Alipay 45 %,
UnionPay 5 %.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from firmware_protocols.messages import Channel
from payment_bridge import rsa2
from payment_bridge.notifications import SIGN_TYPE_HEADER, SIGNATURE_HEADER

CHINA = timezone(timedelta(hours=8))
_CHANNELS = (Channel.WECHAT, Channel.ALIPAY, Channel.UNIONPAY)
_CHANNEL_WEIGHTS = (50, 45, 5)


@dataclass(slots=True)
class BackendStats:
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def format_amount(amount_fen: int) -> str:
    return f"{amount_fen // 100}.{amount_fen % 100:02d}"


class PaymentBackend:
    def __init__(
        self,
        private_key: RSAPrivateKey,
        bridge_url: str,
        merchants: Sequence[str],
        *,
        seed: int | None = None,
        run_id: str | None = None,
    ) -> None:
        if not merchants:
            raise ValueError("the simulated backend needs at least one merchant")
        self._key = private_key
        self._url = bridge_url.rstrip("/") + "/api/v1/notifications/backend"
        self._merchants = list(merchants)
        self._random = random.Random(seed)  # noqa: S311 - simulated traffic, not security.
        # The second, plus a random part: two backends started in the same second (tests, several
        # load generators) must not issue the same payment ids.
        self._run_id = run_id or datetime.now(tz=UTC).strftime("%Y%m%d%H%M%S") + secrets.token_hex(2).upper()
        self._seq = itertools.count(1)
        self.stats = BackendStats()

    def random_amount_fen(self) -> int:
        yuan = math.exp(self._random.gauss(math.log(15), 0.9))
        if self._random.random() < 0.3:
            return max(1, round(yuan)) * 100
        return max(1, round(yuan * 100))

    def notification(
        self,
        *,
        merchant_id: str | None = None,
        amount_fen: int | None = None,
        channel: Channel | None = None,
        status: str = "SUCCESS",
        paid_at: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A signed notification: (body, headers); `paid_at`: now unless given (a late one)."""
        seq = next(self._seq)
        return self._signed(
            {
                "notify_id": f"N{self._run_id}{seq:08d}",
                "payment_id": f"P{self._run_id}{seq:08d}",
                "merchant_id": merchant_id or self._random.choice(self._merchants),
                "amount": format_amount(amount_fen if amount_fen is not None else self.random_amount_fen()),
                "channel": (channel or self._random.choices(_CHANNELS, _CHANNEL_WEIGHTS)[0]).value,
                "status": status,
                "paid_at": (paid_at or datetime.now(tz=CHINA)).astimezone(CHINA).isoformat(timespec="milliseconds"),
            }
        )

    def refund(self, payment: dict[str, Any], amount_fen: int) -> tuple[bytes, dict[str, str]]:
        """A signed REFUND of `payment` (the body of its notification, as JSON): the payment's
        id, the amount refunded, and the refund's own id."""
        seq = next(self._seq)
        return self._signed(
            {
                **payment,
                "notify_id": f"N{self._run_id}{seq:08d}",
                "refund_id": f"R{self._run_id}{seq:08d}",
                "amount": format_amount(amount_fen),
                "status": "REFUND",
                "paid_at": datetime.now(tz=CHINA).isoformat(timespec="milliseconds"),
            }
        )

    def _signed(self, fields: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(fields, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            SIGN_TYPE_HEADER: "RSA2",
            SIGNATURE_HEADER: rsa2.sign(self._key, body),
        }
        return body, headers

    async def send(self, client: httpx.AsyncClient, body: bytes, headers: dict[str, str]) -> httpx.Response:
        self.stats.sent += 1
        try:
            response = await client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.failed += 1
            self.stats.errors.append(str(exc))
            raise
        if response.is_success:
            self.stats.accepted += 1
        else:
            self.stats.failed += 1
            self.stats.errors.append(f"{response.status_code}: {response.text[:200]}")
        return response

    async def run(self, client: httpx.AsyncClient, *, rate_per_s: float, duration_s: float) -> BackendStats:
        """Send notifications at `rate_per_s` for `duration_s`, on a fixed schedule (no drift)."""
        interval = 1.0 / rate_per_s
        total = max(1, round(rate_per_s * duration_s))
        start = time.monotonic()
        in_flight: set[asyncio.Task[httpx.Response | None]] = set()

        async def one() -> httpx.Response | None:
            body, headers = self.notification()
            try:
                return await self.send(client, body, headers)
            except httpx.HTTPError:
                return None

        for i in range(total):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
        return self.stats
