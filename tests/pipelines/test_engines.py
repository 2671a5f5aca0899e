"""Engine parity: the same input gives the same rows on Beam and on Ray; replays are idempotent."""

from __future__ import annotations

import json
from functools import partial

import pyarrow as pa
import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine, StageTask, merge_results, row_items, run_stage
from loom.pipelines.shard import run_shard
from loom.pipelines.synth import run_synth
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


def _canonical(rows: list[dict]) -> list[str]:
    """Rows as sorted canonical JSON: the comparison ignores order, nothing else."""
    return sorted(json.dumps(r, sort_keys=True, default=repr) for r in rows)


@pytest.fixture(scope="module")
def chains(media, tmp_path_factory, ray_session):
    """ingest -> synth -> shard on each engine, into separate roots."""
    out = {}
    for engine in (Engine.BEAM, Engine.RAY):
        base = tmp_path_factory.mktemp(engine.value)
        ingest = run_ingest(media, str(base / "examples"), PreprocessingSpec(), engine,
                            files_per_item=8)
        synth = run_synth(ingest["uri"], str(base / "pairs"), engine=engine, rows_per_item=8)
        shard = run_shard(synth["uri"], str(base / "shards"), rows_per_shard=16, engine=engine)
        out[engine] = {"ingest": ingest, "synth": synth, "shard": shard}
    return out


@pytest.mark.parametrize("stage", ["ingest", "synth", "shard"])
def test_beam_and_ray_write_the_same_version(chains, stage):
    """Every table of every ETL stage: same rows, same counts, same version id (the engine
    is lineage, not identity)."""
    beam, ray = chains[Engine.BEAM][stage], chains[Engine.RAY][stage]
    b_dir, b_m = mf.resolve_input(beam["uri"])
    r_dir, r_m = mf.resolve_input(ray["uri"])
    assert b_m.version == r_m.version, stage
    assert b_m.counts == r_m.counts and beam["counts"] == ray["counts"]
    assert set(b_m.tables) == set(r_m.tables) and b_m.tables
    for table in b_m.tables:
        b_rows = mf.read_table(b_dir, b_m, table).to_pylist()
        r_rows = mf.read_table(r_dir, r_m, table).to_pylist()
        assert len(b_rows) == b_m.rows(table) == r_m.rows(table), (stage, table)
        assert _canonical(b_rows) == _canonical(r_rows), (stage, table)
    assert b_m.lineage.get("engine") in (None, "beam") and r_m.lineage.get("engine") in (None, "ray")
    if stage == "ingest":
        assert (b_m.lineage["spec_digest"], b_m.lineage["raw_listing"]) == \
            (r_m.lineage["spec_digest"], r_m.lineage["raw_listing"])
        examples = mf.read_table(b_dir, b_m, "examples").to_pylist()
        assert len({r["id"] for r in examples}) == b_m.counts["accepted"] > 0
        assert b_m.rows("rejected") > 0 and b_m.rows("duplicates") >= 0


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
