"""Group commit: what arrives while a write is in flight goes into the next write together.

    payments = Coalescer(store.record_payments, key=lambda item: item.payment_id, writers=2)
    async with payments:
        recorded = await payments.submit(item)   # returns once the write holding it committed

At rest a lone item is written at once (no timer, no added latency); under load the batches
grow by themselves, so a thousand notifications a second cost tens of commits, not a thousand.
Two items with the same key never share a write (the second waits for the next one), so a
write sees each key once and its set-based statement stays simple. A write that fails fails
every item in it: the callers decide (the HTTP route answers an error and the platform retries).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AsyncExitStack
from typing import Generic, TypeVar

from mqtt_link.tasks import Component, spawn
from payment_bridge.errors import BridgeError

T = TypeVar("T")
R = TypeVar("R")


class CoalescerClosed(BridgeError):
    """Submitted after the coalescer stopped."""


class Coalescer(Component, Generic[T, R]):
    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        key: Callable[[T], Hashable],
        max_batch: int = 500,
        writers: int = 1,
        name: str = "coalescer",
    ) -> None:
        self._write = write
        self._key = key
        self._max_batch = max_batch
        self._writers = writers
        self._name = name
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._unanswered: set[asyncio.Future[R]] = set()
        self.batches = 0
        self.items = 0

    async def _start(self, stack: AsyncExitStack) -> None:
        for n in range(self._writers):
            spawn(stack, self._run(), name=f"{self._name}-{n}")
        stack.push_async_callback(self._answer_all)

    async def _answer_all(self) -> None:
        # What was submitted (queued or being written) is answered before the writers stop.
        self._closed = True
        if self._unanswered:
            await asyncio.wait(self._unanswered)

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        if self._closed:
            raise CoalescerClosed(f"{self._name} is stopped")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._unanswered.add(future)
        future.add_done_callback(self._unanswered.discard)
        self._queue.append((item, future))
        self._ready.set()
        return future

    async def submit(self, item: T) -> R:
        return await self.submit_nowait(item)

    def _take(self) -> list[tuple[T, asyncio.Future[R]]]:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        keys: set[Hashable] = set()
        later: list[tuple[T, asyncio.Future[R]]] = []
        while self._queue and len(batch) < self._max_batch:
            entry = self._queue.popleft()
            if entry[1].done():  # the caller went away (cancelled); nothing to write for it
                continue
            key = self._key(entry[0])
            if key in keys:
                later.append(entry)
                continue
            keys.add(key)
            batch.append(entry)
        self._queue.extendleft(reversed(later))
        if not self._queue:
            self._ready.clear()
        return batch

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            batch = self._take()
            if not batch:
                continue
            try:
                results = await self._write([item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
