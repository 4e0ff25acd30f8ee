"""Group commit (payment_bridge.coalesce) and the reused summary (fleet_server.recent)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fleet_server.figures.recent import Recent
from payment_bridge.coalesce import Coalescer, CoalescerClosed

pytestmark = pytest.mark.anyio


class Writer:
    """Records each batch; holds every write until released, so a test decides what overlaps."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("database away")
        return [f"stored {item}" for item in items]


async def test_a_lone_item_is_written_at_once_and_answered() -> None:
    writer = Writer()
    async with Coalescer(writer, key=lambda s: s) as coalescer:
        assert await asyncio.wait_for(coalescer.submit("a"), 1) == "stored a"
    assert writer.batches == [["a"]]


async def test_what_arrives_during_a_write_goes_into_the_next_one_together() -> None:
    writer = Writer()
    async with Coalescer(writer, key=lambda s: s) as coalescer:
        writer.gate.clear()
        first = coalescer.submit_nowait("a")
        await asyncio.sleep(0.01)  # "a" is being written
        later = [coalescer.submit_nowait(x) for x in ("b", "c", "d")]
        writer.gate.set()
        assert await asyncio.gather(first, *later) == ["stored a", "stored b", "stored c", "stored d"]
    assert writer.batches == [["a"], ["b", "c", "d"]]
    assert coalescer.batches == 2
    assert coalescer.items == 4


async def test_one_key_never_twice_in_a_write() -> None:
    writer = Writer()
    async with Coalescer(writer, key=lambda s: s.split(":")[0]) as coalescer:
        writer.gate.clear()
        blocker = coalescer.submit_nowait("x:0")
        await asyncio.sleep(0.01)
        futures = [coalescer.submit_nowait(x) for x in ("p1:first", "p2:only", "p1:again")]
        writer.gate.set()
        await asyncio.gather(blocker, *futures)
    assert writer.batches == [["x:0"], ["p1:first", "p2:only"], ["p1:again"]]


async def test_a_failed_write_fails_its_callers_and_the_next_write_goes_on() -> None:
    writer = Writer()
    async with Coalescer(writer, key=lambda s: s) as coalescer:
        writer.fail_next = True
        with pytest.raises(RuntimeError, match="database away"):
            await coalescer.submit("a")
        assert await coalescer.submit("b") == "stored b"


async def test_what_was_submitted_is_written_before_it_stops_and_nothing_after() -> None:
    writer = Writer()
    coalescer = Coalescer(writer, key=lambda s: s, writers=2)
    async with coalescer:
        futures = [coalescer.submit_nowait(x) for x in "abc"]
    assert [f.result() for f in futures] == ["stored a", "stored b", "stored c"]
    with pytest.raises(CoalescerClosed):
        coalescer.submit_nowait("late")


async def test_recent_computes_once_for_concurrent_callers_and_again_after_its_time() -> None:
    calls = 0
    release = asyncio.Event()

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    recent: Recent[int] = Recent(ttl_s=0.2)
    waiting = [asyncio.create_task(recent.get(compute)) for _ in range(5)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 5
    assert await recent.get(compute) == 1  # still fresh
    await asyncio.sleep(0.25)
    assert await recent.get(compute) == 2
    assert recent.computed == 2


async def test_recent_does_not_keep_a_failure() -> None:
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("query failed")
        return "ok"

    recent: Recent[str] = Recent(ttl_s=60)
    with pytest.raises(RuntimeError):
        await recent.get(flaky)
    assert await recent.get(flaky) == "ok"


async def test_recent_shares_only_an_answer_that_was_expensive() -> None:
    cost = 0.0
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(cost)
        return calls

    recent: Recent[int] = Recent(ttl_s=60, reuse_after_s=0.05)
    assert [await recent.get(compute) for _ in range(3)] == [1, 2, 3]  # cheap: always fresh
    cost = 0.06
    assert await recent.get(compute) == 4
    cost = 0.0
    assert await recent.get(compute) == 4  # expensive: shared while fresh
