"""A memory reading's peak while a block runs, sampled in a thread (benchmarks only)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Peak:
    """`with Peak(read, interval) as p: ...` -> `p.value`, the largest `read()` seen: once
    on entry, every `interval` seconds while the block runs, and once on exit."""

    def __init__(self, read: Callable[[], int], interval: float = 0.05):
        self.read, self.interval = read, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.value = max(self.value, self.read())
            time.sleep(self.interval)

    def __enter__(self) -> Peak:
        self.value = self.read()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.value = max(self.value, self.read())
