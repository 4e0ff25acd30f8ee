"""The device's way in: what the servers send it, checked once, then handed to the part that
acts on it.

The router (`mqtt_link.routing`) takes only this device's `down/` subtree and validates each
payload. A malformed message is counted and reported as a `bad_message` event; a topic of a kind
this version does not know is only logged (a newer server may send one). Everything that acts
on the device is signed: here each message must be addressed to this device and verify with a
server key it trusts. One that does not goes to its part's refusal (an announce is acked
`refused`, a command answered `refused`, settings and update offers reported), never to its
action.

    downlink.route(Down.ANNOUNCE, Announce, announcer.take, announcer.refuse)
    await downlink.deliver(delivery)            # the link's message handler
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from edge_agent.stats import AgentStats
from edge_agent.uplink import Uplink
from firmware_protocols import topics
from firmware_protocols.errors import SignatureError
from firmware_protocols.messages import Signed
from firmware_protocols.signing import Verifier
from mqtt_link.link import Delivery
from mqtt_link.routing import Inbound, Rejected, Router

S = TypeVar("S", bound=Signed)


class Downlink:
    def __init__(
        self,
        device_id: str,
        verifier: Verifier,
        uplink: Uplink,
        stats: AgentStats,
        *,
        on_verified: Callable[[Signed], None] | None = None,
    ) -> None:
        """`on_verified`: told of each message whose signature holds, before it is handled
        (the timekeeper: the server's clock had reached its `ts`)."""
        self.device_id = device_id
        self._on_verified = on_verified
        self.router = Router("agent", topics.Direction.DOWN, device_id=device_id, on_reject=self._rejected)
        self._verifier = verifier
        self._uplink = uplink
        self._stats = stats

    def route(
        self,
        kind: topics.Down,
        model: type[S],
        accept: Callable[[S, Delivery], Awaitable[None]],
        refuse: Callable[[S, str], Awaitable[None]],
        *,
        retained: bool = False,
    ) -> None:
        """Messages of `kind` go to `accept` once checked, and to `refuse` with the reason if not."""

        async def checked(inbound: Inbound[S]) -> None:
            try:
                self.check(inbound.message)
            except SignatureError as exc:
                self._stats.refused += 1
                await refuse(inbound.message, str(exc))
                return
            if self._on_verified is not None:
                self._on_verified(inbound.message)
            await accept(inbound.message, inbound.delivery)

        self.router.route(kind, model, checked, retained=retained)

    async def deliver(self, delivery: Delivery) -> None:
        """Take one message from the link; never raises for bad input."""
        await self.router.deliver(delivery)

    def check(self, message: Signed) -> None:
        """Raise `SignatureError` unless `message` is for this device and signed by the server."""
        if message.device_id != self.device_id:
            raise SignatureError(f"{message.describe()}: addressed to {message.device_id}, this is {self.device_id}")
        self._verifier.verify(message)

    async def _rejected(self, rejected: Rejected) -> None:
        if rejected.stage == "topic":
            return  # a kind this version does not know: the router logged it
        self._stats.bad_messages += 1
        await self._uplink.event("bad_message", topic=rejected.delivery.topic, error=str(rejected.error)[:200])
