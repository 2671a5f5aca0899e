"""`loom forget URI` on a small real chain (ingest -> synth -> mine -> shard): every dataset
holding the asset gets a new version without it, its negatives are scrubbed, the LLM and
embedding caches lose it, lineage records the takedown and `loom gc` deletes the old
versions."""

from __future__ import annotations

import json
import pathlib

import pytest
from loom.jobs.cli import app
from loom.jobs.corpus import generate_corpus
from loom.jobs.ops import gc
from loom.pipelines.ingest import run_ingest
from loom.pipelines.mine import run_mine
from loom.pipelines.shard import run_shard
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.transforms.mining import MiningConfig
from typer.testing import CliRunner

from tests.checkpoints import examples_spec, tiny_checkpoint


def _all_ids(root: pathlib.Path) -> set[str]:
    """Every asset id any table of root's newest version names."""
    vdir, m = mf.resolve_input(str(root))
    out: set[str] = set()
    for table, files in m.tables.items():
        for row in mf.read_table(vdir, m, table).to_pylist() if files else []:
            for k in ("id", "positive_id", "duplicate_of"):
                out.add(row.get(k))
            for k in ("query", "positive"):
                if isinstance(row.get(k), dict):
                    out.add(row[k].get("id"))
            out |= {n["id"] for n in row.get("negatives") or []}
    return out


def _cache_rows(base: pathlib.Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for p in base.rglob("_embeddings/*/*.parquet")
            for i in pq.read_table(p).column("id").to_pylist()]


@pytest.mark.slow
def test_forget_takes_an_asset_down_everywhere(tmp_path, ray_session):
    base = tmp_path
    generate_corpus(str(base / "c"), 16, 12, seed=3)
    ex = run_ingest(str(base / "c" / "media"), str(base / "examples"))
    pairs = run_synth(ex["uri"], str(base / "pairs"))
    ckpts = str(base / "ckpt")
    tiny_checkpoint(ckpts, "run-a", examples_spec(ex["uri"]))
    triples = run_mine(pairs["uri"], str(base / "triples"), "latest", ckpts,
                       MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1}))
    run_shard(triples["uri"], str(base / "shards"), rows_per_shard=8)
    # The asset: an image that is a mined negative somewhere (and a positive of its pairs).
    trows = mf.read_table(*mf.resolve_input(triples["uri"]), "triples").to_pylist()
    victim = next(n["id"] for r in trows for n in r["negatives"] if n["modality"] == "image")
    exrows = mf.read_table(*mf.resolve_input(ex["uri"]), "examples").to_pylist()
    uri = next(r["source_uris"][0] for r in exrows if r["id"] == victim)
    llm_before = len(list((base / "pairs" / "_llm_cache").rglob("*.json")))
    assert victim in _cache_rows(base)
    for root in ("examples", "pairs", "triples", "shards"):
        assert victim in _all_ids(base / root), root

    res = CliRunner().invoke(app, ["forget", uri, "--workdir", str(base)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["assets"] == [victim]
    assert {v["stage"] for v in out["versions"]} == {"ingest", "synth", "mine", "shard"}
    for root in ("examples", "pairs", "triples", "shards"):
        assert victim not in _all_ids(base / root), root  # what readers now get
        vdir, m = mf.resolve_input(str(base / root))
        assert m.lineage["takedown"]["assets"] == [victim]
        assert not any(str(base / "examples" / ex["version"]) in s
                       for s in json.dumps(m.lineage.get("examples", "")).split())
    new_ex = mf.resolve_input(str(base / "examples"))[1]
    assert new_ex.rows("examples") == len(exrows) - 1
    assert victim not in _cache_rows(base)
    assert 0 < out["counts"]["llm_cache_entries"]
    assert len(list((base / "pairs" / "_llm_cache").rglob("*.json"))) == \
        llm_before - out["counts"]["llm_cache_entries"]

    plan = gc(str(base), keep=3, dry_run=False, grace_s=0, log_line=lambda s: None)
    deleted = {d["uri"] for d in plan["delete"] if not d.get("partial")}
    for v in out["versions"]:
        assert set(v["replaces"]) <= deleted
        assert storage.exists(storage.join(v["uri"], mf.MANIFEST))
    for root in ("examples", "pairs", "triples", "shards"):  # nothing holds it on disk
        assert not any(victim in p.read_bytes().decode(errors="ignore")
                       for p in (base / root).rglob("manifest.json")
                       if "takedown" not in p.read_text())
    again = CliRunner().invoke(app, ["forget", uri, "--workdir", str(base)])
    assert again.exit_code == 0 and json.loads(
        again.stdout.strip().splitlines()[-1])["counts"]["versions_written"] == 0
