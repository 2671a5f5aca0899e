"""Synth's run-wide duplicate filter as an exchange, on Beam and on Ray.

The pairs are written here in several parts with duplicates spread across them. Each row
is made from a hand-named group (its modalities and a base phrase) and a spelling of the
phrase that normalizes to it (case, spacing, punctuation, full-width letters); the
expected result is computed from the groups alone: the smallest pair_id per group stays.
The round trip's galleries (embedded on Ray) are checked against an in-process reference.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.pipelines.runner import Engine
from loom.pipelines.synth import _run_filters
from loom.pipelines.synth_dedupe import buckets_of, drop_duplicates
from loom.schemas import storage
from loom.schemas.manifest import write_part
from loom.schemas.records import PAIR
from loom.synth.filters import FilterConfig

PHRASES = ["red circle", "a blue ring", "green", "two cats on a mat", "the dog sleeps"]
# (query modality, positive modality, written on the query or the positive)
SIDES = [("text", "image", "query"), ("text", "text", "query"), ("text", "audio", "query"),
         ("image", "text", "positive")]
SPELLINGS = [lambda p: p, str.upper, lambda p: f"  {p.title()}!", lambda p: p.replace(" ", "   "),
             lambda p: f"{p}?", lambda p: "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c
                                                   for c in p)]  # full-width letters


def _pair(pid: str, group: tuple, spelling) -> dict:
    qmod, pmod, side = group[:3]
    text = spelling(group[3])
    return {"pair_id": pid, "kind": "k", "query_text": "" if side == "positive" else text,
            "query_modality": qmod, "query_ref": {"example_id": f"e-{pid}", "parts": None}
            if qmod != "text" else None, "positive_id": f"x-{pid}", "positive_modality": pmod,
            "positive_text": text if side == "positive" else None,
            "split": "heldout" if int(pid, 16) % 3 == 0 else "train",
            "prompt_version": "v", "model": "m", "backend": "offline"}


def _corpus() -> tuple[list[list[dict]], set[str]]:
    """Parts of pairs and the pair_ids that must stay (the smallest per group)."""
    rng = random.Random(7)
    rows, groups = [], {}
    for side in SIDES:
        for phrase in PHRASES:
            group = (*side, phrase)
            for _ in range(rng.randint(1, 5)):
                pid = f"{rng.getrandbits(40):010x}"
                rows.append(_pair(pid, group, rng.choice(SPELLINGS)))
                groups.setdefault(group, []).append(pid)
    keep = {min(pids) for pids in groups.values()}
    rng.shuffle(rows)
    doomed = [r for r in rows if r["pair_id"] not in keep]
    survivors = [r for r in rows if r["pair_id"] in keep]
    # one part loses every row, one loses none, the rest a mix of sizes
    mixed = doomed[3:] + survivors[4:]
    rng.shuffle(mixed)
    cuts = [0, 5, 13, 14, 25, 31, len(mixed)]
    parts = [doomed[:3], survivors[:4]] + [mixed[a:b] for a, b in itertools.pairwise(cuts)]
    assert sum(map(len, parts)) == len(rows) and len(doomed) > 20
    return parts, keep


@pytest.fixture(scope="module")
def corpus():
    return _corpus()


def _write(vdir: str, parts: list[list[dict]]):
    return [write_part(vdir, "pairs", f"part-{n:05d}", pa.Table.from_pylist(rows, schema=PAIR))
            for n, rows in enumerate(parts)]


def _heldout_dropped(parts: list[list[dict]], keep: set[str]) -> int:
    n = sum(r["split"] == "heldout" for rows in parts for r in rows if r["pair_id"] not in keep)
    assert n > 0
    return n


def _check(vdir: str, parts: list[list[dict]], keep: set[str], before, after, dropped: int,
           heldout: int):
    """Kept rows are the expected ones, in their parts' order, under their parts' names; an
    emptied part is gone, a part that lost nothing is untouched; the dropped rows and the
    held-out ones among them are counted."""
    total = sum(map(len, parts))
    assert dropped == total - len(keep)
    assert heldout == _heldout_dropped(parts, keep)
    kept_by_part = {}
    for rec in after:
        kept_by_part[rec.path] = [r["pair_id"] for r in storage.read_parquet(
            [storage.join(vdir, rec.path)]).to_pylist()]
        assert rec.rows == len(kept_by_part[rec.path])
    assert sorted(p for ids in kept_by_part.values() for p in ids) == sorted(keep)
    expected = {b.path: [r["pair_id"] for r in rows if r["pair_id"] in keep]
                for b, rows in zip(before, parts, strict=True)}
    assert kept_by_part == {p: ids for p, ids in expected.items() if ids}
    assert [r.path for r in after] == [b.path for b in before if expected[b.path]]
    assert not storage.exists(storage.join(vdir, before[0].path))  # every row a duplicate
    assert after[0] == before[1]  # nothing dropped: the same file, not rewritten


@pytest.mark.parametrize("buckets", [1, 4])
def test_beam_keeps_the_smallest_pair_id_per_normalized_query(corpus, tmp_path, buckets):
    parts, keep = corpus
    vdir = str(tmp_path / "v")
    before = _write(vdir, parts)
    after, dropped, heldout = drop_duplicates(Engine.BEAM, vdir, before, buckets=buckets)
    _check(vdir, parts, keep, before, after, dropped, heldout)


def test_ray_keeps_the_same_pairs_and_reads_no_rows_in_the_driver(corpus, tmp_path, monkeypatch,
                                                                   ray_session):
    """On Ray every step runs in worker processes: the driver opens no Parquet file."""
    parts, keep = corpus
    vdir = str(tmp_path / "v")
    before = _write(vdir, parts)
    reads: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(str(path))
                        or real(path, *a, **k))
    after, dropped, heldout = drop_duplicates(Engine.RAY, vdir, before, buckets=5)
    assert reads == []
    monkeypatch.undo()
    _check(vdir, parts, keep, before, after, dropped, heldout)


def test_run_filters_counts_and_engines_agree(corpus, tmp_path, ray_session):
    """Through synth's filters on each engine: the same records (sha256 too) and counts."""
    parts, keep = corpus
    out = {}
    for engine in (Engine.BEAM, Engine.RAY):
        vdir = str(tmp_path / engine.value)
        out[engine] = _run_filters(vdir, _write(vdir, parts), FilterConfig(), None, "", "", None,
                                   engine)
    assert out[Engine.BEAM] == out[Engine.RAY]
    files, counts, heldout = out[Engine.BEAM]
    assert counts == {"filtered_duplicate": sum(map(len, parts)) - len(keep),
                      "filtered_roundtrip": 0}
    assert heldout == _heldout_dropped(parts, keep)
    kept = [r["pair_id"] for f in files for r in storage.read_parquet(
        [storage.join(str(tmp_path / "beam"), f.path)], columns=["pair_id"]).to_pylist()]
    assert sorted(kept) == sorted(keep)


def test_buckets_are_the_same_in_every_process():
    """Map workers are separate processes, each with its own str hash seed: a key's bucket
    must not depend on it, or a key's copies meet in different buckets."""
    keys = [f"text\0image\0query {i}" for i in range(200)]
    here = buckets_of(keys, 7).tolist()
    code = ("import sys, json; from loom.pipelines.synth_dedupe import buckets_of; "
            "print(json.dumps(buckets_of(json.loads(sys.stdin.read()), 7).tolist()))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), text=True,
                             capture_output=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""})
        assert json.loads(out.stdout) == here
    assert len(set(here)) == 7


@pytest.mark.slow
def test_round_trip_embeds_the_galleries_on_ray(tmp_path, monkeypatch, ray_session):
    """The round trip's misses match a reference computed here (every gallery Example read
    and embedded in this process, scores sorted in full), while the driver reads no Pairs
    and no Examples file (Ray tasks do); a second run finds every vector in the cache."""
    import numpy as np
    from loom.jobs.corpus import generate_corpus
    from loom.models.checkpoint import resolve
    from loom.models.handler import EncoderHandler
    from loom.pipelines.embed_cache import CACHE_DIR
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.ray.embed import embed_lists
    from loom.pipelines.synth import _roundtrip_misses, run_synth
    from loom.schemas import manifest as mf
    from loom.schemas.records import rows_of

    from tests.checkpoints import examples_spec, tiny_checkpoint

    generate_corpus(str(tmp_path / "c"), 6, 6, seed=15, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    ckpts = str(tmp_path / "ckpt")
    tiny_checkpoint(ckpts, "run-a", examples_spec(ex["uri"]))
    pdir, pm = mf.resolve_input(run_synth(ex["uri"], str(tmp_path / "p"))["uri"])
    rows = [r for r in mf.read_table(pdir, pm, "pairs").to_pylist()
            if r["query_modality"] == "text" and not r["positive_text"]]
    ex_dir, ex_m = mf.resolve_input(ex["uri"])
    roundtrip, k = {"checkpoint": resolve(ckpts, "run-a"), "k": 2}, 2
    cache_root = str(tmp_path / "cache")

    reads: list[str] = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **kw: reads.append(str(path))
                        or real(path, *a, **kw))
    n, uri = _roundtrip_misses(pdir, pm.tables["pairs"], roundtrip, ckpts, ex_dir, ex_m,
                               cache_root)
    monkeypatch.undo()
    read_here = set(reads) & (set(ex_m.files(ex_dir, "examples")) | set(pm.files(pdir, "pairs")))
    assert not read_here
    misses = set(pq.read_table(uri).column("pair_id").to_pylist())
    assert n == len(misses)

    handler = EncoderHandler(ckpts, roundtrip["checkpoint"])
    prep = handler.inputs()
    corpus = rows_of(mf.read_table(ex_dir, ex_m, "examples"))
    expected = set()
    for m in sorted({r["positive_modality"] for r in rows}):
        gallery = [e for e in corpus if e["modality"] == m]
        qs = [r for r in rows if r["positive_modality"] == m]
        g, q = embed_lists([[prep.example(e) for e in gallery],
                            [prep.query(r["pair_id"], r["query_text"]) for r in qs]], handler)
        ranked = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]
        expected |= {r["pair_id"] for r, top in zip(qs, ranked, strict=True)
                     if r["positive_id"] not in {gallery[int(i)]["id"] for i in top}}
    assert misses == expected
    assert 0 < len(misses) < len(rows)

    parts = sorted((tmp_path / "cache" / CACHE_DIR).rglob("*.parquet"))
    assert parts
    again = _roundtrip_misses(pdir, pm.tables["pairs"], roundtrip, ckpts, ex_dir, ex_m,
                              cache_root)
    assert again[0] == n
    assert sorted((tmp_path / "cache" / CACHE_DIR).rglob("*.parquet")) == parts
