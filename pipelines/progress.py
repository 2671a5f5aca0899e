"""Progress bars with live counters, for both engines.

A bar counts what the user listed, files (ingest) or rows (synth, shard), not work items:
each item's size is read from the item itself (its inline rows or its slice's length).

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


def item_size(item: dict) -> int:
    """Files or rows in one work item (1 for an item of unknown shape)."""
    if "rows" in item:
        return len(item["rows"])
    return int(item.get("length", 1))


def item_unit(items: list[dict]) -> str:
    first = items[0] if items else {}
    rows = first.get("rows") or []
    return "file" if rows and isinstance(rows[0], dict) and "uri" in rows[0] else "row"


class Progress:
    def __init__(self, total: int | list[dict], desc: str):
        items = total if isinstance(total, list) else None
        self.sizes = {i["name"]: item_size(i) for i in items or [] if "name" in i}
        count = sum(map(item_size, items)) if items is not None else total
        unit = item_unit(items) if items is not None else "item"
        self.total, self.unit, self.done = count, unit, 0
        self.bar = tqdm(total=count, desc=desc, unit=unit, disable=None, leave=False)
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
            size = self.sizes.get(result.get("name"), 1)
            self.done += size
            self.bar.update(size)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def progress(total: int | list[dict], desc: str) -> Iterator[tuple[str, Progress]]:
    """A bar over work items (pass the items: it counts their files or rows) or a count."""
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
