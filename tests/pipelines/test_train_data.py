"""The trainer's data plan: aligned global batches, bucket weights, seeded file assignment,
and exact resume (the plan itself, and the trainer killed mid-epoch and resumed)."""

from __future__ import annotations

import collections
import json

import pyarrow.parquet as pq
import pytest
from loom.pipelines.train_data import MIXED, Batching, DataPlan, ShardReader
from loom.schemas.records import TRAINING_ROW, to_table

# (kind, positive modality, share): each rank holds 100 / 60 / 20 / 20 rows of them.
MIX = [("caption", "image", 5), ("qa", "text", 3), ("qa", "audio", 1), ("qa", "video", 1)]


def _item(i: str, modality: str) -> dict:
    return {"id": i, "modality": modality, "tokens": [3, 4], "frames": 0}


def _shards(tmp_path, files: int = 8, rows: int = 50) -> tuple[list[str], list[int]]:
    """`files` parquet shards; row n's bucket follows MIX's proportions (5:3:1:1)."""
    pattern = [(k, m) for k, m, n in MIX for _ in range(n)]
    uris = []
    for f in range(files):
        out = []
        for r in range(rows):
            kind, mod = pattern[(f * rows + r) % len(pattern)]
            pid = f"p{f:02d}-{r:03d}"
            out.append({"pair_id": pid, "kind": kind, "query": _item(f"q{pid}", "text"),
                        "positive": _item(f"d{pid}", mod), "negatives": []})
        uri = str(tmp_path / f"shard-{f:03d}.parquet")
        pq.write_table(to_table(out, TRAINING_ROW), uri)
        uris.append(uri)
    return uris, [rows] * files


def _plan(tmp_path, **kw) -> DataPlan:
    files, rows = _shards(tmp_path)
    return DataPlan(**({"files": files, "rows": rows, "world": 2, "batch_size": 4,
                        "seed": 7} | kw))


def _bucket_of_rows(plan: DataPlan, refs) -> set[str]:
    reader = ShardReader(plan.files)
    t = reader.rows(refs).to_pylist()
    return {f"{r['kind']}/{r['positive']['modality']}" for r in t}


def test_aligned_global_batches_are_homogeneous(tmp_path):
    plan = _plan(tmp_path, batching=Batching.ALIGNED)
    steps = plan.epoch(0)
    assert len(steps) == plan.steps_per_epoch() == (4 * 50) // 4
    counts = collections.Counter(s.bucket for s in steps)
    assert set(counts) == {"caption/image", "qa/text", "qa/audio", "qa/video"}
    for s in steps:
        rows = [ref for rank_rows in s.rows for ref in rank_rows]  # the gathered batch
        assert len(rows) == 8 and len(set(rows)) == 8
        assert _bucket_of_rows(plan, rows) == {s.bucket}
    # each rank reads only its own files
    own = plan.assign(0)
    for r in range(2):
        assert {f for s in steps for f, _ in s.rows[r]} <= set(own[r])


def test_small_bucket_joins_the_mixed_remainder(tmp_path):
    """qa/audio and qa/video (20 rows per rank) with a batch of 24: their rows are drawn
    only in `mixed` batches, which hold nothing else."""
    plan = _plan(tmp_path, batching=Batching.ALIGNED, batch_size=24)
    steps = [s for e in range(6) for s in plan.epoch(e)]
    assert {s.bucket for s in steps} == {"caption/image", "qa/text", MIXED}
    for s in steps:
        seen = _bucket_of_rows(plan, [ref for rows in s.rows for ref in rows])
        assert seen <= {"qa/audio", "qa/video"} if s.bucket == MIXED else seen == {s.bucket}


def test_a_remainder_short_of_a_batch_is_topped_up_not_dropped(tmp_path):
    """With a batch of 48, qa/audio + qa/video (40 rows per rank) cannot fill one: the
    mixed batches take them plus rows of other buckets, so none is lost."""
    plan = _plan(tmp_path, batching=Batching.ALIGNED, batch_size=48)
    steps = [s for e in range(10) for s in plan.epoch(e)]
    small = [s for s in steps if _bucket_of_rows(plan, s.rows[0]) & {"qa/audio", "qa/video"}]
    assert small and all(s.bucket == MIXED for s in small)
    # and when no bucket can fill a batch, every step is a mixed one, none is skipped
    tiny = _plan(tmp_path, batching=Batching.ALIGNED, batch_size=101)
    steps = tiny.epoch(0)
    assert len(steps) == tiny.steps_per_epoch() == 1
    assert {s.bucket for s in steps} == {MIXED}


def test_bucket_frequencies_follow_the_weights(tmp_path):
    weights = {"caption/image": 1.0, "qa/text": 3.0, "qa/audio": 1.0, "qa/video": 0.0}
    plan = _plan(tmp_path, batching=Batching.ALIGNED, weights=weights)
    drawn = collections.Counter(s.bucket for e in range(8) for s in plan.epoch(e))
    total = sum(drawn.values())
    for k, w in weights.items():
        assert drawn[k] / total == pytest.approx(w / 5.0, abs=0.05), drawn
    # without weights, buckets are drawn in proportion to their rows (5:3:1)
    natural = collections.Counter(s.bucket for e in range(8)
                                  for s in _plan(tmp_path, batching=Batching.ALIGNED).epoch(e))
    total = sum(natural.values())
    assert natural["caption/image"] / total == pytest.approx(0.5, abs=0.05)
    assert natural["qa/text"] / total == pytest.approx(0.3, abs=0.05)


def test_assignment_is_seeded_and_disjoint(tmp_path):
    plan = _plan(tmp_path)
    a, b = plan.assign(0), plan.assign(0)
    assert a == b and not set(a[0]) & set(a[1])
    assert sorted(a[0] + a[1]) == list(range(8))
    assert plan.assign(1) != a  # reshuffled per epoch, still seeded
    other = _plan(tmp_path, seed=8)
    assert [s.rows for s in other.epoch(0)] != [s.rows for s in plan.epoch(0)]
    mixed = plan.epoch(0)  # mixed: each rank's rows in its files' order
    assert mixed[0].rows[0][0] == (a[0][0], 0)
    pos = plan.position(0, 3, mixed)
    assert pos["ranks"][0] == {"shard": plan.files[mixed[3].rows[0][0][0]],
                               "row": mixed[3].rows[0][0][1]}


def test_uneven_shards_give_every_epoch_the_same_steps(tmp_path):
    """A short last shard (as run_shard writes): each epoch's assignment differs, but every
    rank still has a full batch at every step of every epoch."""
    files, _ = _shards(tmp_path, files=5)
    rows = [50, 50, 50, 30, 30]  # dealt in file order, the loads could be 130 / 80
    plan = DataPlan(files=files, rows=rows, world=2, batch_size=10, seed=1)
    n = plan.steps_per_epoch()
    assert n == 10  # 50+50 / 50+30+30
    assignments = set()
    for e in range(12):
        assignments.add(tuple(map(tuple, plan.assign(e))))
        steps = plan.epoch(e)
        assert len(steps) == n and all(len(r) == 10 for s in steps for r in s.rows)
    assert len(assignments) > 1


@pytest.mark.parametrize("batching", list(Batching))
def test_a_recomputed_plan_continues_exactly(tmp_path, batching):
    """The plan is a pure function: the steps after a saved position are the ones an
    uninterrupted run takes."""
    first = _plan(tmp_path, batching=batching).epoch(1)
    again = _plan(tmp_path, batching=batching).epoch(1)
    assert [(s.bucket, s.rows) for s in first] == [(s.bucket, s.rows) for s in again]


# ---- the trainer, stopped mid-epoch and resumed ---------------------------------------


@pytest.fixture(scope="module")
def resume_shards(tmp_path_factory):
    from loom.pipelines.shard import run_shard

    from tests.pipelines.test_shards_tools import _bigger_pairs, _examples

    base = tmp_path_factory.mktemp("resume")
    pairs = _bigger_pairs(str(base / "pairs"), _examples(str(base / "examples")), 96)
    return run_shard(pairs, str(base / "shards"), rows_per_shard=16)["uri"]


def _rows_log(where) -> dict[int, list]:
    out = {}
    for f in sorted(where.glob("rank*.jsonl")):
        out[int(f.stem[4:])] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_trainer_stopped_mid_epoch_resumes_on_the_same_rows(resume_shards, tmp_path,
                                                            ray_session, workers):
    from loom.pipelines.train import TrainConfig, TrainStage, run_train

    # two workers also run cached steps (GradCache + cross-worker negatives) with gradient
    # checkpointing in the real loop: the row sequence must not depend on them
    cfg = TrainConfig(epochs=2, batch_size=8, dim=16, layers=1, heads=2, embed_dims=(8, 16),
                      checkpoint_every=1000, batching=Batching.ALIGNED,
                      cache_chunk=3 if workers == 2 else 0, grad_checkpointing=workers == 2)
    per_epoch = 96 // workers // 8
    stop = per_epoch + per_epoch // 2  # mid second epoch
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    full = run_train(resume_shards, str(tmp_path / "ck-a"), TrainStage.PFT, cfg,
                     workers=workers, log_rows=str(tmp_path / "a"))
    part = run_train(resume_shards, str(tmp_path / "ck-b"), TrainStage.PFT, cfg,
                     workers=workers, stop_at_step=stop, log_rows=str(tmp_path / "b"))
    assert part.get("stopped_at") == stop
    rest = run_train(resume_shards, str(tmp_path / "ck-b"), TrainStage.PFT, cfg,
                     workers=workers, log_rows=str(tmp_path / "b"))
    assert rest["counts"]["steps"] == full["counts"]["steps"] == 2 * per_epoch
    a, b = _rows_log(tmp_path / "a"), _rows_log(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(workers))
    for r in range(workers):
        assert [e["step"] for e in a[r]] == list(range(2 * per_epoch))
        # the resumed run started at the saved step: nothing before it was read again
        assert [e["step"] for e in b[r]] == list(range(2 * per_epoch))
        assert [e["ids"] for e in b[r]] == [e["ids"] for e in a[r]]
    if workers == 2:  # each step's global batch is one bucket on both ranks
        for s0, s1 in zip(a[0], a[1], strict=True):
            assert s0["bucket"] == s1["bucket"]


@pytest.mark.parametrize("args, reason", [
    (["--batching", "bogus"], "batching"),
    (["--embed-dims", "8,x"], "--embed-dims"),
    (["--bucket-weight", "caption/image"], "--bucket-weight"),
    (["--workers", "7"], "6 shard files for 7 workers"),
])
def test_train_cli_bad_options_exit_2(resume_shards, tmp_path, args, reason):
    from loom.jobs.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["train", "--shards", resume_shards, "--output",
                                   str(tmp_path / "ck"), *args])
    assert res.exit_code == 2, res.output
    assert reason in res.stderr
    assert not (tmp_path / "ck").exists()
