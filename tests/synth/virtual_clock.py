"""An asyncio event loop on a virtual clock: when nothing is ready to run, time jumps to the
next timer instead of sleeping. Rate limiters and retry back-offs are then measured in exact
virtual seconds, independent of how loaded the machine is (a wall-clock lower bound passes a
broken limiter on a slow machine; an upper bound fails a correct one)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        # CPython's loop keeps ready callbacks in `_ready` and timers in the `_scheduled` heap.
        if not self._ready:
            pending = [h.when() for h in self._scheduled if not h.cancelled()]
            if pending:
                self._virtual_now = max(self._virtual_now, min(pending))
        super()._run_once()


def run_virtual(coro: Coroutine[Any, Any, Any]) -> Any:
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()
