"""What the agent resilience tests run against: a private Mosquitto they may kill, a publisher
that retries like the payment bridge, and a listener for everything a device sends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest

from edge_agent.hardware.audio import PLAYED_LOG
from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.messages import Announce
from firmware_protocols.signing import Signer
from mqtt_link.errors import LinkDown
from mqtt_link.link import Delivery, Link
from simulators import mosquitto
from tests.integration.conftest import signed_announce

FINAL_STATUSES = {"played", "duplicate", "expired", "refused", "failed", "silenced"}


class PrivateMosquitto(mosquitto.PrivateMosquitto):
    """A Mosquitto of the test's own, with persistence, that the test may kill -9 and start again."""

    def __init__(self, folder: Path) -> None:
        try:
            super().__init__(folder)
        except mosquitto.MosquittoError as exc:
            pytest.skip(str(exc))


class RetryingPublisher:
    """Publishes signed announces and republishes each until the device answers or its TTL ends,
    as the payment bridge does; records every ack."""

    def __init__(self, broker_port: int, signer: Signer, client_id: str) -> None:
        self._signer = signer
        self.pending: dict[str, Announce] = {}
        self.acks: dict[str, list[str]] = {}
        self.link = Link(
            BrokerEndpoint("127.0.0.1", broker_port),
            client_id=client_id,
            subscriptions=[topics.fleet_uplink_filter(topics.Up.ACK)],
            on_message=self._on_ack,
        )
        self._retry: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RetryingPublisher:
        await self.link.__aenter__()
        await self.link.wait_connected(10)
        self._retry = asyncio.create_task(self._retry_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._retry is not None:
            self._retry.cancel()
        await self.link.close()

    async def _on_ack(self, delivery: Delivery) -> None:
        body = json.loads(delivery.payload)
        self.acks.setdefault(body["payment_id"], []).append(body["status"])

    def final(self, payment_id: str) -> str | None:
        return next((s for s in self.acks.get(payment_id, []) if s in FINAL_STATUSES), None)

    async def announce(self, device_id: str, payment_id: str, *, ttl_s: int = 300, amount_fen: int = 1250) -> None:
        announce = signed_announce(self._signer, device_id, payment_id, ttl_s=ttl_s, amount_fen=amount_fen)
        self.pending[payment_id] = announce
        await self._publish(announce)

    async def _publish(self, announce: Announce) -> None:
        # On LinkDown it stays recorded; the retry loop publishes it once the broker is back.
        with contextlib.suppress(LinkDown):
            await self.link.publish(topics.down(announce.device_id, topics.Down.ANNOUNCE), announce.to_json())

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(3)
            now = time.time_ns() // 1_000_000
            for payment_id, announce in list(self.pending.items()):
                if self.final(payment_id) is None and now < announce.expires_at():
                    await self._publish(announce)


def plays(audio_dir: Path) -> Counter[str]:
    """How many times the simulated speaker said each payment, from its play log."""
    log = audio_dir / PLAYED_LOG
    if not log.exists():
        return Counter()
    return Counter(
        line.split(" ", 2)[1] for line in log.read_text(encoding="utf-8").splitlines() if line.count(" ") >= 2
    )
