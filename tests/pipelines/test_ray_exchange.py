"""The Ray exchange's shuffle layout: input blocks and partitions stop growing with the
items (the driver tracks a piece per block x partition), and items that share a block
still come out as the plain group-by they describe."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
from loom.pipelines.exchange import Exchange
from loom.pipelines.ray import runner
from loom.pipelines.ray.runner import exchange_layout, run_ray_exchange

from tests.stages import Echo, EchoTask


@pytest.mark.parametrize("cpus", [1, 2, 16, 256])
def test_layout_is_capped_by_the_cluster_not_the_corpus(cpus):
    pieces = []
    for items in (1, 3, 8, 40, 1_000, 4_150, 100_000, 10_000_000):
        blocks, parts = exchange_layout(items, cpus)
        assert 1 <= blocks <= items and 1 <= parts <= items
        assert parts >= min(items, 2 * cpus), "fewer partitions than the CPUs can reduce"
        pieces.append(blocks * parts)
    # from ~1,000 items on (a partition per 8 items meets the cap), the pieces no longer grow with the items
    assert pieces[5] == pieces[-1]
    assert pieces[-1] <= max(64, 2 * cpus) * max(128, 2 * cpus)


@pytest.mark.parametrize("items,blocks", [(1, 64), (3, 64), (40, 4), (157, 64), (4_150, 64),
                                          (100_000, 512)])
def test_strided_blocks_hold_every_item_once_and_spread_each_run(items, blocks):
    got = runner.strided_blocks(items, blocks)
    assert len(got) == min(items, blocks)
    assert sorted(i for b in got for i in b) == list(range(items))
    sizes = [len(b) for b in got]
    assert max(sizes) - min(sizes) <= 1
    # any run of consecutive items (a folder in URI order) lands in as many blocks as it
    # has items, up to every block
    for start, run in ((0, len(got)), (items // 3, min(items - items // 3, 7))):
        owners = {j for j, b in enumerate(got) for i in b if start <= i < start + run}
        assert len(owners) == min(run, len(got))


def _map(item: dict):
    # every item sends a value to a key shared with items far from it in the list,
    # so each group gathers values from many input blocks
    for r in range(item["rows"]):
        yield f"k{(item['i'] * 7 + r) % 23:02d}", f"{item['i']}:{r}".encode()


def _count(key: str, values: list[bytes]):
    yield f"n{len(values) % 5}", json.dumps({"key": key, "values": sorted(v.decode() for v in values)}).encode()


def _gather(key: str, values: list[bytes]):
    yield key, json.dumps(sorted(json.loads(v)["key"] for v in values)).encode()


def test_items_sharing_blocks_group_as_a_plain_group_by(ray_session, monkeypatch):
    monkeypatch.setattr(runner, "MAX_BLOCKS", 5)  # 300 items in 5 blocks, 60 items each
    monkeypatch.setattr(runner, "MAX_PARTITIONS", 6)
    items = [{"i": i, "rows": 1 + i % 4} for i in range(300)]
    assert exchange_layout(len(items), 2) == (5, 6)

    got = run_ray_exchange(Exchange("unused", _map, (_count, _gather)), items)

    first = defaultdict(list)
    for item in items:
        for r in range(item["rows"]):
            first[f"k{(item['i'] * 7 + r) % 23:02d}"].append(f"{item['i']}:{r}")
    second = defaultdict(list)
    for key, values in first.items():
        second[f"n{len(values) % 5}"].append(key)
    assert got == sorted((k, json.dumps(sorted(v)).encode()) for k, v in second.items())


class _PidTask(EchoTask):
    """Returns its item, and the actor process that ran it."""

    def run(self, stage, item: dict) -> dict:
        import os

        return super().run(stage, item) | {"pid": os.getpid()}


def test_run_ray_items_share_capped_blocks_and_each_runs_once(ray_session, tmp_path, monkeypatch):
    """40 items over a cap of 4 blocks: Ray Data is asked for 4 blocks (not 40: its driver
    keeps state per block), every item's result comes back exactly once, and both actors
    of the pool get work."""
    import ray

    asked, blocks = [], []
    real = ray.data.from_items

    def from_items(rows, override_num_blocks=None, **kw):
        asked.append(override_num_blocks)
        blocks.extend([i["k"] for i in json.loads(r["items"])] for r in rows)
        return real(rows, override_num_blocks=override_num_blocks, **kw)

    monkeypatch.setattr(runner, "MAX_BLOCKS", 4)
    monkeypatch.setattr(ray.data, "from_items", from_items)
    monkeypatch.setattr(runner.ray, "cluster_resources", lambda: {"CPU": 2.0})
    items = [{"name": f"i{k:02d}", "k": k} for k in range(40)]
    out = runner.run_ray(_PidTask(Echo, str(tmp_path)), items, actors=2)
    assert asked == [4]
    # a row per block, each taking every 4th item: items 0-9 (one costly folder, say)
    # are spread over the 4 blocks, not all in the first
    assert blocks == [list(range(j, 40, 4)) for j in range(4)]
    assert sorted(r["k"] for r in out) == list(range(40))
    assert len({r["pid"] for r in out}) == 2
