"""Benchmark (issue 16): the Ray exchange's driver memory and wall time as the work items
grow, against bare Ray Data doing the same map + groupby + map_groups with its defaults,
and against the layout loom used before (one input block per item, a partition per 8).

    nice -n 10 .venv/bin/python -m tests.benchmarks.bench_exchange --items 500 2000 4000

Each item maps to ROWS (key, 64-byte value) pairs over items x ROWS / 640 keys (a shard's
worth of rows per key, as shard packing sends them); the reduce counts a key's values.
Every variant runs in the same Ray session (2 CPUs, 256 MB object store), and the
driver's USS is sampled every 0.1 s: the printed growth is its peak over its value before
the run (after a warm-up run of each). The last line is the JSON.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from functools import partial

import psutil

ROWS = 240


def _map(item: dict):
    keys = max(1, item["n"] * ROWS // 640)
    for r in range(ROWS):
        yield f"s{(item['i'] * ROWS + r) % keys:06d}", b"x" * 64


def _count(key: str, values: list[bytes]):
    yield key, json.dumps({"n": len(values)}).encode()


def _bare(items: list[dict]) -> list:
    """Ray Data with its defaults: the items as they come, one groupby, map_groups."""
    import pyarrow as pa
    import ray
    from loom.pipelines.ray.runner import _pairs

    def map_batch(batch: dict) -> pa.Table:
        return _pairs([kv for s in batch["item"] for kv in _map(json.loads(s))])

    def reduce(group: pa.Table) -> pa.Table:
        key = group.column("key")[0].as_py()
        return _pairs(list(_count(key, group.column("value").to_pylist())))

    ds = ray.data.from_items([{"item": json.dumps(i)} for i in items])
    ds = ds.map_batches(map_batch, batch_size=1, batch_format="numpy")
    ds = ds.groupby("key").map_groups(reduce, batch_format="pyarrow")
    return sorted((row["key"], row["value"]) for row in ds.iter_rows())


def _loom(items: list[dict], layout=None) -> list:
    from loom.pipelines.exchange import Exchange
    from loom.pipelines.ray import runner

    if layout is None:
        return runner.run_ray_exchange(Exchange("unused", _map, (_count,)), items)
    before = runner.exchange_layout
    runner.exchange_layout = layout
    try:
        return runner.run_ray_exchange(Exchange("unused", _map, (_count,)), items)
    finally:
        runner.exchange_layout = before


def _one_block_per_item(items: int, cpus: int) -> tuple[int, int]:
    """The layout before stop 18: a block per item, a partition per 8 items."""
    return items, min(items, max(2 * cpus, -(-items // 8)))


def measure(fn, items: list[dict]) -> dict:
    proc = psutil.Process()
    base = proc.memory_full_info().uss
    peak, stop = [base], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_full_info().uss)
            time.sleep(0.1)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out = fn(items)
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    return {"driver_growth_mb": round((peak[0] - base) / 2**20, 1), "wall_s": round(wall, 2),
            "pairs": len(out), "out": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[500, 2000])
    args = ap.parse_args()
    from loom.pipelines.ray.session import ensure_ray

    ensure_ray(num_cpus=2, object_store_mb=256)
    _loom([{"i": i, "n": 8} for i in range(8)])  # warm: workers started, Ray Data imported
    _bare([{"i": i, "n": 8} for i in range(8)])
    report = {}
    for n in args.items:
        items = [{"i": i, "n": n} for i in range(n)]
        runs = {"loom": measure(_loom, items),
                "ray_data_defaults": measure(_bare, items),
                "one_block_per_item": measure(partial(_loom, layout=_one_block_per_item), items)}
        outs = {name: r.pop("out") for name, r in runs.items()}
        assert outs["loom"] == outs["ray_data_defaults"] == outs["one_block_per_item"]
        loom = runs["loom"]
        for name in ("ray_data_defaults", "one_block_per_item"):
            r = runs[name]
            print(f"{n} items: loom {loom['driver_growth_mb']} MB {loom['wall_s']} s | {name} "
                  f"{r['driver_growth_mb']} MB {r['wall_s']} s | wall ratio (loom/{name}) "
                  f"{loom['wall_s'] / r['wall_s']:.2f}x", flush=True)
        report[str(n)] = runs
    print(json.dumps(report))


if __name__ == "__main__":
    main()
