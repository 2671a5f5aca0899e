"""Engine parity: the same input gives the same rows on Beam and on Ray; replays are idempotent."""

from __future__ import annotations

import warnings
from functools import partial

import pyarrow as pa
import pytest

from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine, StageTask, merge_results, row_items, run_stage
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.ingest import IngestConfig, IngestStage, hash_file, pick_canonical


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(str(out), 12, 12, seed=1)
    return str(out / "media")


def _sorted(table: pa.Table, key: str) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r[key])


def test_beam_and_ray_ingest_same_rows(media, tmp_path, ray_session):
    spec = PreprocessingSpec()
    beam = run_ingest(media, str(tmp_path / "beam"), spec, Engine.BEAM, files_per_item=8)
    ray = run_ingest(media, str(tmp_path / "ray"), spec, Engine.RAY, files_per_item=8)
    assert beam["counts"] == ray["counts"]
    b_dir, b_m = mf.resolve_input(str(tmp_path / "beam"))
    r_dir, r_m = mf.resolve_input(str(tmp_path / "ray"))
    assert b_m.lineage["engine"] == "beam" and r_m.lineage["engine"] == "ray"
    for table, key in (("examples", "id"), ("rejected", "uri"), ("duplicates", "uri")):
        b_rows = _sorted(mf.read_table(b_dir, b_m, table), key)
        r_rows = _sorted(mf.read_table(r_dir, r_m, table), key)
        assert b_rows == r_rows, table
    assert len({r["id"] for r in mf.read_table(b_dir, b_m, "examples").to_pylist()}) == \
        b_m.counts["accepted"]
    # The engine is lineage, not identity: both runs should name the same version.
    if b_m.version != r_m.version:  # reported, not asserted (see the brief)
        warnings.warn(f"engine changes the version id: {b_m.version} != {r_m.version}",
                      stacklevel=1)
    assert (b_m.lineage["spec_digest"], b_m.lineage["raw_listing"]) == \
        (r_m.lineage["spec_digest"], r_m.lineage["raw_listing"])


def test_beam_bundle_replay_writes_no_duplicates(media, tmp_path):
    """A replayed bundle (DirectRunner's bundle repeat) overwrites its parts, never adds rows."""
    hashes = [hash_file(e.uri) for e in storage.list_files(media)]
    canonical, _ = pick_canonical(hashes)
    rows = [{"uri": h["uri"], "id": h["id"]} for h in canonical]
    version_dir = str(tmp_path / "version")
    task = StageTask(partial(IngestStage, IngestConfig(spec=PreprocessingSpec())), version_dir)
    items = row_items(rows, 5)
    results = run_stage(Engine.BEAM, task, items, pipeline_args=[
        "--runner=DirectRunner", "--direct_runner_bundle_repeat=2",
        "--direct_num_workers=1",
    ])
    assert sorted(r["name"] for r in results) == sorted(i["name"] for i in items)
    tables, _ = merge_results(results)
    listed = [f.path for fs in tables.values() for f in fs]
    assert len(listed) == len(set(listed))
    examples = storage.read_parquet([storage.join(version_dir, f.path)
                                     for f in tables["examples"]])
    ids = examples.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    n_rejected = sum(f.rows for f in tables.get("rejected", []))
    assert len(ids) + n_rejected == len(rows)
    # On disk too: exactly one part per item and table, whatever the replays did.
    on_disk = sorted((tmp_path / "version" / "examples").glob("*.parquet"))
    assert len(on_disk) == len(tables["examples"])


def test_relative_paths_reach_ray_workers(media, tmp_path, monkeypatch, ray_session):
    """Ray workers run in their own cwd: a relative --output must still land here."""
    monkeypatch.chdir(tmp_path)
    out = run_ingest(media, "rel-out", PreprocessingSpec(), Engine.RAY)
    assert out["uri"].startswith(str(tmp_path))
    version_dir, manifest = mf.resolve_input(str(tmp_path / "rel-out"))
    assert manifest.counts["accepted"] > 0
    assert mf.read_table(version_dir, manifest, "examples").num_rows == manifest.counts["examples"]
