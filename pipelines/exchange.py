"""What every engine adapter runs for a shuffle: a map over work items, then group-by-key steps.

A stage that must bring rows together across inputs (a join, a global sort) states it
as an `Exchange`: `map` turns one work item into (key, value) pairs, and each reduce
takes one key with all its values and yields the next step's pairs (no reduce: the
map's pairs are the result, with no shuffle). The last step's values are small JSON texts (file records, counters) that come back to the driver; the
rows travel through the engine's own shuffle (Beam's GroupByKey, Ray Data's groupby),
never through the driver and never as one file per (input, output) pair. Engines only
decide where the steps run: the functions are the same on both, so their output is too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable

import numpy as np
import pyarrow as pa

KeyValues = Iterable[tuple[str, bytes]]


@dataclasses.dataclass(frozen=True)
class Exchange:
    """Picklable: the steps, and the version whose `_work` holds an engine's bookkeeping."""

    version_dir: str
    map: Callable[[dict], KeyValues]
    reduces: tuple[Callable[[str, list[bytes]], KeyValues], ...]
    name: str = "exchange"


def to_ipc(table: pa.Table) -> bytes:
    """A table as one value of an exchange (Arrow IPC: the types travel with it)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as out:
        out.write_table(table)
    return sink.getvalue().to_pybytes()


def from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def run_here(exchange: Exchange, items: list[dict]) -> list[tuple[str, bytes]]:
    """The same steps in this process, sorted by key as `run_exchange` returns them: for
    inputs bounded by a constant, where starting an engine's pipeline costs more than the
    work (the steps do not depend on the order of a key's values, on any engine)."""
    pairs = [kv for item in items for kv in exchange.map(item)]
    for reduce in exchange.reduces:
        grouped: dict[str, list[bytes]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        pairs = [kv for key in sorted(grouped) for kv in reduce(key, grouped[key])]
    return sorted(pairs, key=lambda kv: kv[0])


def buckets_of(keys: list[str], n: int) -> np.ndarray:
    """Each key's bucket: its md5's first 32 bits mod n (Python's str hash is salted per
    process, so workers would disagree)."""
    return np.array([int(hashlib.md5(k.encode()).hexdigest()[:8], 16) % n for k in keys],
                    np.int64)
