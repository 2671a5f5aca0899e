"""Versions outside readers can trust: ingest, synth and shard SIGKILLed at several points,
rerun to completion, and every table folder read by pyarrow.dataset, polars, DuckDB, pandas
and Hugging Face `datasets` gives exactly the manifest's rows (no temp file, no duplicate).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import uuid

import duckdb
import pandas as pd
import polars as pl
import pyarrow.dataset as ds
import pytest
from datasets import load_dataset
from loom.jobs.corpus import generate_corpus
from loom.jobs.ops import gc_plan, list_versions
from loom.schemas import manifest as mf

from tests.procs import sigkill_when

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEYS = {"examples": "id", "rejected": "uri", "duplicates": "uri", "files": "uri",
        "pairs": "pair_id", "shards": "pair_id"}


def _loom(*args: str) -> subprocess.Popen:
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "loom.jobs.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _has(root: pathlib.Path, pattern: str) -> bool:
    return any(v for v in root.glob("*-*") if not (v / "manifest.json").exists()
               and any(v.glob(pattern)))


def _kill_then_finish(args: list[str], out: pathlib.Path, points: list[str]) -> None:
    """One run killed at each point (a glob inside the unfinished version), then a rerun.
    Before the rerun, a whole part is copied into its table folder under the temp name an
    older loom left there, as a killed run used to: the rerun must clear it."""
    for pattern in points:
        proc = _loom(*args)
        sigkill_when(proc, lambda p=pattern: _has(out, p), 300, pattern)
    vdir = next(v for v in out.glob("*-*") if not (v / "manifest.json").exists())
    table = next(t for t in sorted(vdir.iterdir()) if t.is_dir() and not t.name.startswith("_")
                 and any(t.glob("*.parquet")))
    part = next(table.glob("*.parquet"))
    shutil.copy(part, table / f"{part.name}.tmp-{uuid.uuid4().hex}")
    proc = _loom(*args)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]


def _read_all_ways(folder: pathlib.Path, key: str) -> dict[str, list]:
    glob = f"{folder}/*"  # the widest glob: anything a reader could pick up
    return {
        "pyarrow.dataset": ds.dataset(str(folder)).to_table(columns=[key]).column(key)
        .to_pylist(),
        "pandas": pd.read_parquet(folder, columns=[key])[key].tolist(),
        "polars": pl.read_parquet(glob, columns=[key])[key].to_list(),
        "duckdb": [r[0] for r in duckdb.sql(f"select {key} from read_parquet('{glob}')")
                   .fetchall()],
        # (its cache beside the dataset roots, in the test's tmp folder)
        "datasets": load_dataset("parquet", data_dir=str(folder), split="train",
                                 cache_dir=str(folder.parents[2] / "hf-cache"))[key],
    }


def _check_readers(root: pathlib.Path) -> int:
    vdir, manifest = mf.resolve_input(str(root))
    tables = 0
    for table, files in manifest.tables.items():
        if not files:
            continue
        key = KEYS[table]
        want = sorted(mf.read_table(vdir, manifest, table, columns=[key]).column(key)
                      .to_pylist())
        folder = pathlib.Path(vdir) / table
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            pathlib.Path(f.path).name for f in files), table  # only the manifest's parts
        for reader, got in _read_all_ways(folder, key).items():
            assert sorted(got) == want, (table, reader)
        if table in ("examples", "pairs"):
            assert len(set(want)) == len(want), table
        tables += 1
    return tables


@pytest.mark.slow
def test_killed_runs_leave_versions_every_reader_reads_right(tmp_path):
    corpus = tmp_path / "corpus"
    generate_corpus(str(corpus), 150, 60, seed=3)
    ex, pairs, shards = tmp_path / "examples", tmp_path / "pairs", tmp_path / "shards"
    _kill_then_finish(["ingest", "--input", str(corpus / "media"), "--output", str(ex)], ex,
                      ["_work/files/*.parquet", "examples/*.parquet"])
    _kill_then_finish(["synth", "--examples", str(ex), "--output", str(pairs)], pairs,
                      ["pairs/*.parquet"])
    _kill_then_finish(["shard", "--input", str(pairs), "--output", str(shards),
                       "--rows-per-shard", "16"], shards,
                      ["_work/_rows/*.parquet", "shards/*.parquet"])
    assert sum(_check_readers(r) for r in (ex, pairs, shards)) >= 6
    for r in (ex, pairs, shards):  # nothing left for ls to report or gc to remove
        out = list_versions(str(r))
        assert out["counts"]["leftovers"] == 0 and out["counts"]["partials"] == 0
        assert not (pathlib.Path(out["versions"][0]["uri"]) / "_work").exists()


def test_ls_reports_and_gc_removes_leftovers(tmp_path):
    """A complete version with a killed run's temp file and `_work/` (as older loom left)."""
    from loom.schemas.records import REJECTED, to_table

    root = tmp_path / "root"
    w = mf.VersionWriter(str(root), "ingest", mf.version_id("ingest", ["x"], {}))
    part = w.write_part("rejected", "part-00000", to_table(
        [{"uri": "u", "stage": "ingest", "reason": "empty"}], REJECTED))
    w.commit({"rejected": [part]}, {}, {}, {})
    stray = root / w.version / "rejected" / f"part-00001.parquet.tmp-{uuid.uuid4().hex}"
    stray.write_bytes((root / w.version / part.path).read_bytes())
    work = root / w.version / "_work" / "beam-1.json"
    work.parent.mkdir(exist_ok=True)
    work.write_text("[]")
    listed = list_versions(str(root))
    assert sorted(listed["versions"][0]["leftovers"]) == sorted([str(stray), str(work)])
    assert listed["counts"]["leftovers"] == 2
    plan = gc_plan(str(root), keep=1, grace_s=0)
    assert sorted(d["uri"] for d in plan["delete"] if d.get("leftover")) == sorted(
        [str(stray), str(work)])
    from loom.jobs.ops import gc

    gc(str(root), keep=1, dry_run=False, grace_s=0, log_line=lambda s: None)
    assert not stray.exists() and not work.exists()
    assert (root / w.version / part.path).exists()
    assert list_versions(str(root))["counts"]["leftovers"] == 0


def test_a_part_killed_before_its_rename_stays_out_of_the_table_folder(tmp_path, monkeypatch):
    """The write finished, the rename never happened (SIGKILL in between): the temp file
    is under `_work/`, not in `rejected/` where `dir/*` globs would read it."""
    from loom.schemas.records import REJECTED, to_table

    staged = []

    def killed(src, dst):
        staged.append(src)
        raise KeyboardInterrupt  # stands in for the kill: nothing after the write runs

    w = mf.VersionWriter(str(tmp_path), "ingest", mf.version_id("ingest", ["y"], {}))
    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        w.write_part("rejected", "part-00000", to_table(
            [{"uri": "u", "stage": "ingest", "reason": "empty"}], REJECTED))
    folder = tmp_path / w.version / "rejected"
    assert not folder.exists() or not any(folder.iterdir())
    assert pathlib.Path(staged[0]).parent == tmp_path / w.version / "_work" / "tmp"
