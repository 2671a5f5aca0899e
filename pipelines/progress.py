"""Progress bars with live counters, for both engines.

Ray streams results to the driver, which updates the bar. Beam's DirectRunner runs
DoFns in the driver process, so a DoFn reports to the bar registered under the run's
key; on Dataflow no bar is registered there and reporting is a no-op.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

_BARS: dict[str, "Progress"] = {}


class Progress:
    def __init__(self, total: int, desc: str):
        self.bar = tqdm(total=total, desc=desc, unit="item", disable=None, leave=False)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def update(self, result: dict) -> None:
        """One finished work item: its stats and rows written add to the counters."""
        with self._lock:
            for k, v in (result.get("stats") or {}).items():
                self.counts[k] = self.counts.get(k, 0) + int(v)
            for f in result.get("files", []):
                key = f"{f['table']}_rows"
                self.counts[key] = self.counts.get(key, 0) + int(f["rows"])
            self.bar.set_postfix({k: v for k, v in self.counts.items()
                                  if not k.startswith("_")}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def progress(total: int, desc: str) -> Iterator[tuple[str, Progress]]:
    key = uuid.uuid4().hex
    bar = _BARS[key] = Progress(total, desc)
    try:
        yield key, bar
    finally:
        _BARS.pop(key, None)
        bar.close()


def report(key: str | None, result: dict) -> None:
    bar = _BARS.get(key) if key else None
    if bar is not None:
        bar.update(result)
