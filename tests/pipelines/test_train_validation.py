"""Validation while training (issue 15, 5b): held-out shards scored every N steps, logged
to the metrics table, and `--keep best` marking the best step's checkpoint."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from loom.models.checkpoint import load_checkpoint, resolve, step_name
from loom.models.embed import embed_items
from loom.pipelines.common import BadInput
from loom.pipelines.shard import run_shard
from loom.pipelines.train import TrainConfig, TrainStage, run_train
from loom.schemas import manifest as mf
from loom.schemas.records import PAIR, Split, to_table

from tests.pipelines.test_shards_tools import TEXTS, _examples

N, HELDOUT = 128, 32  # every 4th pair is held out
CFG = TrainConfig(epochs=2, batch_size=16, lr=5e-3, warmup_steps=2, dim=16, layers=1, heads=2,
                  embed_dims=(8, 16), checkpoint_every=1000)


def _split_pairs(root: str, examples_dir: str) -> str:
    positives = ["text-0", "text-1", "image-0", "image-1"]
    rows = [{"pair_id": f"pair-{i:04d}", "task": "t", "kind": ["caption", "question"][i % 2],
             "query_text": f"{TEXTS[i % 2]} {i}", "query_modality": "text",
             "positive_id": positives[(i // 4 + i) % 4],
             "positive_modality": "image" if (i // 4 + i) % 4 >= 2 else "text",
             "split": "heldout" if i % 4 == 0 else "train", "prompt_version": "v1",
             "model": "offline", "backend": "offline", "generation_config": "{}", "seed": 0}
            for i in range(N)]
    writer = mf.VersionWriter(root, "synth", "synth-split")
    recs = [writer.write_part("pairs", f"part-{k:05d}", to_table(rows[k:k + 40], PAIR))
            for k in range(0, N, 40)]
    writer.commit({"pairs": recs}, {"pairs": N}, {"heldout_fraction": 0.25},
                  {"examples": examples_dir})
    return writer.dir


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory):
    base = tmp_path_factory.mktemp("valshards")
    pairs = _split_pairs(str(base / "pairs"), _examples(str(base / "examples")))
    train = run_shard(pairs, str(base / "shards"), rows_per_shard=32)
    held = run_shard(pairs, str(base / "shards"), rows_per_shard=10, split=Split.HELDOUT)
    return train, held


def _ids(out: dict) -> list[str]:
    return pq.read_table(_files(out), columns=["pair_id"]).column(0).to_pylist()


def _files(out: dict) -> list[str]:
    d, m = mf.resolve_input(out["uri"])
    return m.files(d, "shards")


def test_heldout_shards_hold_exactly_the_heldout_pairs(split_shards):
    train, held = split_shards
    assert held["version"] != train["version"]
    held_ids, train_ids = set(_ids(held)), set(_ids(train))
    assert held_ids == {f"pair-{i:04d}" for i in range(0, N, 4)}
    assert len(train_ids) == N - HELDOUT and not held_ids & train_ids


def _expected(model, rows: list[dict], dims: tuple[int, ...], temperature: float) -> dict:
    """R@1 per pair and the Matryoshka InfoNCE, from the serving path (embed_items) and
    numpy: each query ranked against the distinct positive assets of its modality."""
    queries, positives = [r["query"] for r in rows], [r["positive"] for r in rows]
    pids = [p["id"] for p in positives]
    out, recalls = {}, {}
    q, d = (embed_items(model, x, dim=max(dims)) for x in (queries, positives))
    assets = {pid: d[pids.index(pid)] for pid in dict.fromkeys(pids)}
    for i, (qi, pi) in enumerate(zip(queries, positives, strict=True)):
        cand = [a for a in assets if positives[pids.index(a)]["modality"] == pi["modality"]]
        top = cand[int(np.argmax([assets[a] @ q[i] for a in cand]))]
        recalls.setdefault(f"{qi['modality']}->{pi['modality']}", []).append(top == pids[i])
    out |= {f"val_r1/{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["val_r1"] = float(np.mean([out[f"val_r1/{k}"] for k in recalls]))
    same = np.array(pids)[:, None] == np.array(pids)[None, :]
    losses = []
    for dim in dims:
        qd, dd = embed_items(model, queries, dim=dim), embed_items(model, positives, dim=dim)
        logits = np.where(same & ~np.eye(len(rows), dtype=bool), -np.inf,
                          qd @ dd.T / temperature)
        logits -= logits.max(1, keepdims=True)
        losses.append(float(np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))))
    out["val_loss"] = float(np.mean(losses))
    return out


def test_validation_every_n_steps_and_keep_best(split_shards, tmp_path, ray_session):
    train, held = split_shards
    root = str(tmp_path / "ck")
    out = run_train(train["uri"], root, TrainStage.PFT, CFG, val_shards=held["uri"],
                    val_every=5, keep_best=True)
    steps = out["counts"]["steps"]
    assert steps == 2 * (N - HELDOUT) // 16 == 12
    df = pl.read_parquet(out["datasets"]["metrics"]).sort("step")
    pairs = {"val_r1/text->text", "val_r1/text->image"}
    assert pairs | {"val_r1", "val_loss"} <= set(df.columns)
    scored = df.filter(pl.col("val_r1").is_not_null())
    assert scored["step"].to_list() == [5, 10, 12]  # every 5 steps, and the last
    assert df.filter(pl.col("val_r1").is_null())["val_loss"].null_count() == steps - 3
    # the best step is marked and resolvable; it has a checkpoint even off checkpoint_every
    best = scored.row(int(np.argmax(scored["val_r1"].to_numpy())), named=True)
    assert out["best"]["step"] == best["step"] and out["best"]["val_r1"] == best["val_r1"]
    run = out["version"]
    assert resolve(root, f"{run}/best") == out["best"]["checkpoint"] == \
        f"{run}/{step_name(best['step'])}"
    rows = pq.read_table(_files(held), columns=["query", "positive"]).to_pylist()
    assert len(rows) == HELDOUT
    # the logged figures are the checkpoints' own, recomputed outside the trainer
    for step in sorted({best["step"], steps}):
        ckpt = resolve(root, f"{run}/best") if step == best["step"] else out["checkpoint"]
        logged = scored.filter(pl.col("step") == step).row(0, named=True)
        want = _expected(load_checkpoint(root, ckpt).model, rows, CFG.embed_dims,
                         logged["temperature"])
        assert {k: logged[k] for k in want} == pytest.approx(want, abs=1e-4)


def test_bad_validation_options_exit_2_before_training(split_shards, tmp_path):
    train, held = split_shards
    with pytest.raises(BadInput, match="--keep best needs --val-shards"):
        run_train(train["uri"], str(tmp_path / "a"), TrainStage.PFT, CFG, keep_best=True)
    with pytest.raises(BadInput, match="holds heldout rows"):
        run_train(held["uri"], str(tmp_path / "b"), TrainStage.PFT, CFG)
    with pytest.raises(BadInput, match="--val-shards: no complete dataset"):
        run_train(train["uri"], str(tmp_path / "c"), TrainStage.PFT, CFG,
                  val_shards=str(tmp_path / "nothing-here"))
    with pytest.raises(BadInput, match="is not a shards dataset"):
        run_train(train["uri"], str(tmp_path / "d"), TrainStage.PFT, CFG,
                  val_shards=mf.read_manifest(train["uri"]).lineage["input"])
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_two_workers_validate_on_rank_zero_and_resume_keeps_the_best(split_shards, tmp_path,
                                                                     ray_session):
    """Rank 0 validates while the other rank waits in the next step's all-reduce (cached
    steps: GradCache's own reduction); a run stopped and resumed keeps the best so far."""
    train, held = split_shards
    root = str(tmp_path / "ck")
    cfg = CFG.model_copy(update={"batch_size": 8, "cache_chunk": 3})
    kw = {"workers": 2, "val_shards": held["uri"], "val_every": 2, "keep_best": True}
    part = run_train(train["uri"], root, TrainStage.PFT, cfg, stop_at_step=5, **kw)
    assert part["stopped_at"] == 5
    out = run_train(train["uri"], root, TrainStage.PFT, cfg, **kw)
    df = pl.read_parquet(out["datasets"]["metrics"]).sort("step")
    steps = out["counts"]["steps"]
    assert df["step"].to_list() == list(range(1, steps + 1))
    scored = df.filter(pl.col("val_r1").is_not_null())
    assert scored["step"].to_list() == sorted({*range(2, steps + 1, 2), 5, steps})
    best = scored.row(int(np.argmax(scored["val_r1"].to_numpy())), named=True)
    assert out["best"]["step"] == best["step"]
