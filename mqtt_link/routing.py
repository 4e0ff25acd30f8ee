"""Typed inbound routing: a topic and payload in, a validated protocol message to its handler.

    router = Router("ingest", Direction.UP, on_reject=quarantine)
    router.route(Up.HEALTH, Health, store_health)        # store_health(inbound: Inbound[Health])
    async with Link(endpoint, ..., on_message=router.deliver): ...

Every consumer of the device protocol (the agent's downlink, the fleet ingest, the bridge's
acks, command results, OTA reports) takes its messages through the same steps, here, once:

1. the topic is a v1 topic (`topics.parse`); one outside the router's scope (the other direction,
   or another device's subtree for a device's router) is ignored: some brokers hand a resumed
   session its own retained uplink;
2. its kind is routed here;
3. the payload decodes and validates with the protocol's one parser (`decode_payload`, `validate_fields`); a retained
   route takes an empty payload as a cleared retained message and ignores it;
4. an uplink message names the device of its topic (a device cannot speak for another);
5. with a `verify` hook (the servers' `ReportAuthority`), the message is signed by its device,
   or comes from a device that has never signed (protocol v1 before signing): the hook says
   which, and raises `SignatureError` for a forgery.

What fails a step is a `Rejected`: counted, logged with the consumer, topic and reason, handed
to the router's one reject hook, and then acknowledged (with `manual_ack`), so that no single
message can hold a stream. What passes goes to its handler as an `Inbound`: the parsed topic, the
validated message and the delivery (with its receipt, which the handler acknowledges once it has
done what the message asks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import structlog

from firmware_protocols import topics
from firmware_protocols.endpoint import BrokerEndpoint
from firmware_protocols.errors import MessageError, ProtocolError
from firmware_protocols.messages import Message, Report, decode_payload, validate_fields
from mqtt_link.link import Delivery, Link

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Inbound(Generic[M]):
    """A message that passed every step: where it came from, what it says, and its delivery."""

    topic: topics.Topic
    message: M
    delivery: Delivery
    # The message's signature was verified (`verify` hook); False: the device does not sign.
    signed: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that did not pass. `stage` says which step refused it: the topic (not v1, or a
    kind not routed here), the payload (not a valid message, or naming another device) or the
    signature (forged, or unsigned from a device that signs)."""

    delivery: Delivery
    error: ProtocolError
    stage: Stage
    topic: topics.Topic | None


@dataclass(slots=True)
class RouteStats:
    received: int = 0
    rejected: int = 0
    ignored: int = 0  # outside the router's scope, or a cleared retained message


Stage = Literal["topic", "payload", "signature"]
Handler = Callable[[Inbound[Any]], Awaitable[None]]
RejectHook = Callable[[Rejected], Awaitable[None]]
# Says whether a report is signed by its device (True), or from a device that does not sign
# (False); raises SignatureError for one that must not be believed.
# Gets the report and its fields as they came (which the signature covers).
VerifyHook = Callable[[Report, Mapping[str, Any]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class _Route:
    model: type[Message]
    handler: Handler
    retained: bool


class Router:
    def __init__(
        self,
        consumer: str,
        direction: topics.Direction,
        *,
        device_id: str | None = None,
        on_reject: RejectHook | None = None,
        verify: VerifyHook | None = None,
    ) -> None:
        """`consumer` names this router in logs; `direction` is what it takes (a device takes
        `down`, servers `up`); `device_id` limits it to one device's subtree; `verify` checks
        each uplink report's signature."""
        self.consumer = consumer
        self.stats = RouteStats()
        self._direction = direction
        self._device_id = device_id
        self._on_reject = on_reject
        self._verify = verify
        self._routes: dict[topics.Up | topics.Down, _Route] = {}
        self._log = log.bind(consumer=consumer, **({"device_id": device_id} if device_id else {}))

    def route(
        self,
        kind: topics.Up | topics.Down,
        model: type[M],
        handler: Callable[[Inbound[M]], Awaitable[None]],
        *,
        retained: bool = False,
    ) -> None:
        """Hand messages of `kind`, validated as `model`, to `handler`. `retained`: the kind is
        published retained, so an empty payload is a cleared message, not a bad one."""
        if kind in self._routes:
            raise ValueError(f"{self.consumer}: {kind} is routed already")
        # The table holds handlers of Inbound[Any]; each route's handler gets its own model's messages.
        self._routes[kind] = _Route(model, handler, retained)

    def subscriptions(self, share_group: str | None = None) -> list[str]:
        """The topic filters that bring what this router takes: a device's whole `down/` subtree,
        or each routed kind from every device (as a shared subscription of `share_group`, if
        given, so processes of one kind split the stream)."""
        if self._device_id is not None:
            return [topics.device_downlink_filter(self._device_id)]
        return [topics.shared(topics.fleet_uplink_filter(topics.Up(kind)), share_group) for kind in self._routes]

    async def deliver(self, delivery: Delivery) -> None:
        """Take one message through the steps; never raises for bad input."""
        self.stats.received += 1
        try:
            topic = topics.parse(delivery.topic)
        except MessageError as exc:
            await self._reject(delivery, exc, "topic", None)
            return
        if topic.direction is not self._direction or (self._device_id not in (None, topic.device_id)):
            self._ignore(delivery, "not addressed to this consumer")
            return
        route = self._routes.get(topic.kind)
        if route is None:
            await self._reject(delivery, MessageError(f"topic {delivery.topic!r} is not handled here"), "topic", topic)
            return
        if route.retained and not delivery.payload:
            self._ignore(delivery, "a cleared retained message")
            return
        try:
            fields = decode_payload(route.model, delivery.payload, topic=delivery.topic)
            message = validate_fields(route.model, fields, topic=delivery.topic)
            if topic.direction is topics.Direction.UP and message.device_id != topic.device_id:
                raise MessageError(
                    f"{route.model.__name__} on {delivery.topic}: payload device_id {message.device_id!r}"
                    " does not match the topic"
                )
        except MessageError as exc:
            await self._reject(delivery, exc, "payload", topic)
            return
        signed = False
        if self._verify is not None and isinstance(message, Report):
            try:
                signed = await self._verify(message, fields)
            except ProtocolError as exc:
                await self._reject(delivery, exc, "signature", topic)
                return
        await route.handler(Inbound(topic, message, delivery, signed))

    def _ignore(self, delivery: Delivery, why: str) -> None:
        self.stats.ignored += 1
        self._log.debug("message ignored", topic=delivery.topic, why=why)
        if delivery.receipt is not None:
            delivery.receipt.ack()

    async def _reject(self, delivery: Delivery, error: ProtocolError, stage: Stage, topic: topics.Topic | None) -> None:
        self.stats.rejected += 1
        self._log.warning("malformed message dropped", topic=delivery.topic, stage=stage, error=str(error))
        try:
            if self._on_reject is not None:
                await self._on_reject(Rejected(delivery, error, stage, topic))
        finally:
            # Whatever the hook did, a message that cannot be taken must not be sent again.
            if delivery.receipt is not None:
                delivery.receipt.ack()


def consumer_link(
    router: Router, endpoint: BrokerEndpoint, *, client_id: str, share_group: str | None = None, **options: Any
) -> Link:
    """A `Link` that subscribes to what `router` takes (`router.subscriptions(share_group)`) and
    hands it every message; `options` are the Link's own (manual_ack, session, ...)."""
    return Link(
        endpoint,
        client_id=client_id,
        subscriptions=router.subscriptions(share_group),
        on_message=router.deliver,
        **options,
    )
