"""The whole chain (corpus -> ingest -> synth -> shard -> pft -> mine -> shard -> ft -> eval ->
report) on a tiny corpus, run once per module; every test reads that run's outputs."""

from __future__ import annotations

import json
import pathlib

import pytest
from loom.jobs.demo import DemoConfig, run_demo
from loom.schemas import manifest as mf
from loom.schemas import storage

STAGES = ["corpus", "ingest", "synth", "shard_pft", "train_pft", "mine", "shard_ft",
          "train_ft", "eval", "report"]
CFG = DemoConfig(images=60, texts=60, pft_epochs=2, ft_epochs=1, batch_size=16, rows_per_shard=64)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_session):
    workdir = str(tmp_path_factory.mktemp("chain"))
    first = run_demo(workdir, CFG, log=lambda m: None)
    second = run_demo(workdir, CFG, log=lambda m: None)
    return {"workdir": workdir, "first": first, "second": second}


def _table(uri: str, table: str):
    d, m = mf.resolve_input(uri)
    return mf.read_table(d, m, table).to_pylist()


def _heldout_ids(chain) -> set[str]:
    pairs = _table(chain["first"]["stages"]["synth"]["uri"], "pairs")
    return {p["positive_id"] for p in pairs if p["split"] == "heldout"}


def test_every_stage_ran(chain):
    stages = chain["first"]["stages"]
    assert list(stages) == STAGES
    assert not any(s["reused"] for s in stages.values())
    assert chain["first"]["reused"] == []


def test_ingest_accounts_for_every_file(chain):
    ingest = chain["first"]["stages"]["ingest"]
    c = ingest["counts"]
    assert c["listed"] == chain["first"]["stages"]["corpus"]["counts"]["files"]
    assert c["listed"] == c["accepted"] + c["duplicate"] + c["rejected"]
    assert c["rejected"] >= 3
    rejected = {pathlib.PurePath(r["uri"]).name: r["reason"]
                for r in _table(ingest["uri"], "rejected")}
    assert len(rejected) == c["rejected"]
    # The planted bad files, each with its reason code.
    assert rejected["doc-empty.txt"] == "empty"
    assert rejected["img-truncated.png"] in {"truncated", "decode_error"}
    assert rejected["blob.bin"] in {"unsupported_format", "decode_error"}
    assert set(rejected.values()) <= {"empty", "truncated", "decode_error", "unsupported_format"}
    # A PNG named .txt is sniffed by content and accepted as an image.
    examples = _table(ingest["uri"], "examples")
    by_name = {pathlib.PurePath(e["source_uris"][0]).name: e for e in examples}
    assert by_name["doc-mislabeled.txt"]["modality"] == "image"
    assert len({e["id"] for e in examples}) == len(examples) == c["accepted"]


def test_planted_duplicate_is_recorded(chain):
    ingest = chain["first"]["stages"]["ingest"]
    dups = _table(ingest["uri"], "duplicates")
    assert len(dups) == ingest["counts"]["duplicate"] == 1
    # The smallest uri of a content id is kept: `copy-of-first.png` sorts before the original.
    assert pathlib.PurePath(dups[0]["uri"]).name == "img-00000.png"
    examples = {e["id"]: e for e in _table(ingest["uri"], "examples")}
    kept = examples[dups[0]["duplicate_of"]]
    assert [pathlib.PurePath(u).name for u in kept["source_uris"]] == [
        "copy-of-first.png", "img-00000.png"]  # the Example lists every source URI


def test_pairs_split_by_positive_id(chain):
    """Stored splits, checked by their properties (not against split_for, which wrote them):
    every pair of an asset is on one side, and about a fifth of the assets are held out."""
    pairs = _table(chain["first"]["stages"]["synth"]["uri"], "pairs")
    assert {p["split"] for p in pairs} == {"train", "heldout"}
    assert chain["first"]["stages"]["synth"]["counts"]["heldout_pairs"] == sum(
        p["split"] == "heldout" for p in pairs)
    examples = {e["id"]: e for e in _table(chain["first"]["stages"]["ingest"]["uri"], "examples")}
    by_asset: dict[str, set[str]] = {}
    for p in pairs:  # an asset group: of the Example the LLM wrote about (image->text too)
        owner = examples[(p["query_ref"] or {}).get("example_id") or p["positive_id"]]
        assert p["group"] == (owner.get("near_dup_group") or owner["id"]), p["pair_id"]
        by_asset.setdefault(p["group"], set()).add(p["split"])
    assert all(len(s) == 1 for s in by_asset.values()), "an asset's pairs straddle the split"
    share = sum(s == {"heldout"} for s in by_asset.values()) / len(by_asset)
    # ~120 assets at 0.2: the binomial sd is ~0.037, so [0.08, 0.35] is > 3 sd either way,
    # and a flipped comparison (0.8 held out) or a no-op (0) falls outside.
    assert 0.08 <= share <= 0.35, share


def test_heldout_never_in_shards(chain):
    heldout = _heldout_ids(chain)
    assert heldout
    for name in ("shard_pft", "shard_ft"):
        rows = _table(chain["first"]["stages"][name]["uri"], "shards")
        assert rows
        assert {r["positive"]["id"] for r in rows} & heldout == set(), name
        negs = {n["id"] for r in rows for n in r["negatives"]}
        assert negs & heldout == set(), name
    pft_rows = _table(chain["first"]["stages"]["shard_pft"]["uri"], "shards")
    assert all(r["negatives"] == [] for r in pft_rows)


def test_triples_negatives(chain):
    triples = _table(chain["first"]["stages"]["mine"]["uri"], "triples")
    heldout = _heldout_ids(chain)
    assert triples and any(t["negatives"] for t in triples)
    examples = {e["id"]: e["modality"]
                for e in _table(chain["first"]["stages"]["ingest"]["uri"], "examples")}
    for t in triples:
        assert t["positive_id"] not in heldout
        for n in t["negatives"]:
            assert n["id"] != t["positive_id"]
            assert n["id"] not in heldout
            assert n["modality"] == t["positive_modality"] == examples[n["id"]]


def _check_run(root: pathlib.Path, run: str) -> dict:
    steps = sorted(p for p in (root / run).glob("step-*") if p.is_dir())
    assert steps
    for s in steps:
        for f in ("model.safetensors", "preprocessing.json", "state.json"):
            assert (s / f).is_file(), s / f
    latest = json.loads((root / run / "latest.json").read_text())
    assert latest["checkpoint"] == f"{run}/{steps[-1].name}"
    assert json.loads((steps[-1] / "state.json").read_text())["complete"] is True
    return latest


def test_checkpoints(chain):
    stages = chain["first"]["stages"]
    root = pathlib.Path(stages["train_pft"]["checkpoint_root"])
    pft = _check_run(root, stages["train_pft"]["version"])
    ft = _check_run(root, stages["train_ft"]["version"])
    assert pft["checkpoint"] == stages["train_pft"]["checkpoint"]
    assert ft["checkpoint"] == stages["train_ft"]["checkpoint"] == chain["first"]["checkpoint"]
    lineage = json.loads((root / stages["train_ft"]["version"] / "lineage.json").read_text())
    assert lineage["stage"] == "ft"
    assert lineage["init"] == stages["train_pft"]["checkpoint"]
    pft_lineage = json.loads((root / stages["train_pft"]["version"] / "lineage.json").read_text())
    assert pft_lineage["init"] is None
    assert storage.exists(stages["train_pft"]["datasets"]["metrics"])


def test_eval_table(chain):
    ev = chain["first"]["eval"]
    assert set(ev) >= {"text->image", "text->text"}
    for name in ("text->image", "text->text"):
        for key in ("r@1", "r@5", "random_r@1", "untrained_r@1"):
            assert 0.0 <= ev[name][key] <= 1.0, (name, key)
        assert ev[name]["r@1"] <= ev[name]["r@5"]
        assert ev[name]["queries"] > 0 and ev[name]["gallery"] > 0
    assert 0.0 <= ev["text->text"]["lexical_r@1"] <= 1.0
    # Against its baseline: text->text retrieval beats a random ranking by far (text->image
    # has too few held-out images at this size to beat chance reliably).
    assert ev["text->text"]["r@1"] > 2 * ev["text->text"]["random_r@1"] > 0
    assert "lexical_r@1" not in ev["text->image"]
    for name in ("text->image", "text->text"):  # every Matryoshka size, full size on top
        by_dim = ev[name]["by_dim"]
        assert sorted(by_dim, key=int) == ["32", "64", "128"]
        top = by_dim[max(by_dim, key=int)]
        assert {k: ev[name][k] for k in top} == top
        assert all(0.0 <= m["ndcg@10"] <= 1.0 for m in by_dim.values())


def test_metrics_table(chain):
    import polars as pl

    stages = chain["first"]["stages"]
    df = pl.read_parquet(stages["train_pft"]["datasets"]["metrics"])
    assert {"step", "lr", "temperature", "loss", "samples_per_s", "data_wait_s",
            "compute_s"} <= set(df.columns)
    assert any(c.startswith("loss_") for c in df.columns)
    assert df["step"].to_list() == list(range(1, df.height + 1))
    assert set(df["temperature"].round(6).to_list()) == {0.05}  # fixed unless learned


def test_report(chain):
    report = pathlib.Path(chain["first"]["report"])
    text = report.read_text()
    assert "| pair | r@1 | r@5 |" in text
    assert "| text->image |" in text and "| text->text |" in text
    assert (report.parent / "loss.png").is_file()
    assert (report.parent / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = pathlib.Path(chain["first"]["report_html"]).read_text()
    for fig in ("stage_counts", "rejected", "synth", "negatives", "loss", "eval"):
        assert f"id=fig-{fig}><svg" in page, fig
    assert "ndcg@10" in page  # the per-size eval table


def test_rerun_reuses_everything(chain):
    first, second = chain["first"], chain["second"]
    assert all(s["reused"] is True for s in second["stages"].values())
    assert second["reused"] == STAGES
    assert second["stages"]["synth"]["llm_calls"] == 0
    for name in STAGES:
        assert second["stages"][name]["version"] == first["stages"][name]["version"], name
    assert second["checkpoint"] == first["checkpoint"]
    assert second["eval"] == first["eval"]


def test_eval_truncation_sizes(chain, tmp_path):
    from loom.pipelines.evaluate import run_eval

    stages = chain["first"]["stages"]
    out = run_eval(stages["synth"]["uri"], stages["train_ft"]["checkpoint"],
                   stages["train_ft"]["checkpoint_root"], str(tmp_path / "eval"), dims=(16,),
                   ground_truth=stages["corpus"]["datasets"]["ground_truth"])
    for name, entry in out["eval"].items():
        assert sorted(entry["by_dim"], key=int) == ["16", "32", "64", "128"], name
        assert entry["by_dim"]["128"] == chain["first"]["eval"][name]["by_dim"]["128"]
