"""The tasks a resource owns: stopped reliably (`cancel_and_wait`), started so that they will be
stopped (`spawn`), and the resource built around them on one exit stack (`Component`)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Self

# How long to wait for a cancelled task before cancelling it again.
_RECANCEL_S = 0.5


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has finished.

    One cancel is not always enough on Python 3.11: `asyncio.wait_for` (used inside aiomqtt and
    the standard library) swallows a cancellation that arrives just as its inner future
    completes, and the task carries on. So cancel again until the task is done.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=_RECANCEL_S)
    if not task.cancelled() and task.exception() is not None:
        # Surface a crash that happened before the cancel, rather than hide it.
        raise task.exception()  # type: ignore[misc]


def spawn(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
    """Start `coro` as a task that `stack` cancels, and waits for, when it unwinds."""
    task = asyncio.create_task(coro, name=name)
    stack.push_async_callback(cancel_and_wait, task)
    return task


class Component:
    """An async resource built on one `AsyncExitStack`: `_start(stack)` enters its children
    (`stack.enter_async_context`), starts its loops (`spawn(stack, ...)`) and registers what must
    be closed, in order; leaving the context unwinds all of it in reverse, and a start that fails
    part way unwinds what had started before the error goes on. Nothing is left running.

        class Inspector(Component):
            async def _start(self, stack: AsyncExitStack) -> None:
                spawn(stack, self._run(), name="inspector")
    """

    _stack: AsyncExitStack | None = None

    async def _start(self, stack: AsyncExitStack) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            await self._start(stack)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unwind what `_start` started; once (later calls do nothing)."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()


async def until_signalled(command: Coroutine[Any, Any, int]) -> int:
    """Run `command`; SIGTERM (and Ctrl-C) cancel it, so every resource shuts down in order."""
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await command
    except asyncio.CancelledError:
        return 0
