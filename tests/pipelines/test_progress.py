"""Bars count files or rows, not work items; training progress reaches the driver as a
per-epoch bar and as log records with step, loss, samples/s and ETA."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios
import threading

import pytest
from loom.pipelines.progress import Progress
from loom.pipelines.ray.train import PROGRESS, watch_progress
from loom.pipelines.runner import file_items, row_items

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ingest_bar_counts_files_and_synth_bar_counts_rows():
    files = [{"uri": f"/raw/{i}.txt", "id": str(i)} for i in range(130)]
    items = row_items(files, 64)  # three items: 64, 64 and 2 files
    bar = Progress(items, "ingest")
    assert (bar.total, bar.unit) == (130, "file")
    bar.update({"name": items[2]["name"], "files": [], "stats": {}})
    assert bar.done == 2
    bar.close()
    slices = file_items([{"path": "examples/p.parquet", "rows": 300, "sha256": ""}], "/v", 128)
    bar = Progress(slices, "synth")
    assert (bar.total, bar.unit) == (300, "row")
    for it in slices:
        bar.update({"name": it["name"], "files": [], "stats": {}})
    assert bar.done == 300
    bar.close()


def test_training_progress_is_logged_per_epoch_with_eta(tmp_path, caplog):
    run = tmp_path / "pft-x"
    run.mkdir()
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="loom.train")
    t = threading.Thread(target=watch_progress, args=(str(tmp_path), "pft-x", stop, 0.05, 0.0))
    t.start()
    for step in range(1, 21):  # two epochs of ten steps, as rank 0 writes them
        (run / PROGRESS).write_text(json.dumps({
            "step": step, "epoch": (step - 1) // 10, "epochs": 2, "total_steps": 20,
            "loss": 3.0 - step / 10, "samples_per_s": 12.5}))
        stop.wait(0.12)
    stop.set()
    t.join(timeout=10)
    recs = [r for r in caplog.records if r.name == "loom.train"]
    assert recs and recs[-1].step == 20 and recs[-1].epoch == 2
    assert {r.epoch for r in recs} == {1, 2}
    assert all(hasattr(r, k) for r in recs for k in ("loss", "samples_per_s", "eta_s"))
    assert any(r.eta_s is not None and r.eta_s > 0 for r in recs if r.step < 20)
    assert "samples/s" in recs[-1].getMessage()


def test_a_resumed_run_keeps_the_metrics_before_its_checkpoint(tmp_path):
    """Rank 0 rewrites metrics.parquet before each checkpoint; a resume from step 5 keeps
    steps 1..5 (not 6..7, trained after the checkpoint and redone) and appends to them."""
    from loom.pipelines.ray.train import METRICS, _metrics_until, _write_metrics

    _write_metrics(str(tmp_path), "run", [{"step": s, "loss": 1.0 / s} for s in range(1, 8)])
    kept = _metrics_until(str(tmp_path), "run", 5)
    assert [r["step"] for r in kept] == [1, 2, 3, 4, 5]
    _write_metrics(str(tmp_path), "run", kept + [{"step": s, "loss": 0.1} for s in (6, 7, 8)])
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "run" / METRICS)["step"].to_pylist() == list(range(1, 9))


@pytest.mark.slow
def test_loom_train_draws_its_bar_on_a_terminal(tmp_path):
    """`loom train` end to end with stderr on a pseudo-terminal: the epoch bar (step count,
    loss, samples/s) and the per-epoch log line reach the user while the run goes on."""
    from loom.pipelines.shard import run_shard

    from tests.pipelines.test_shards_tools import _bigger_pairs, _examples

    pairs = _bigger_pairs(str(tmp_path / "pairs"), _examples(str(tmp_path / "ex")), 64)
    shards = run_shard(pairs, str(tmp_path / "shards"), rows_per_shard=32)["uri"]
    main, child = pty.openpty()  # a terminal 160 columns wide (a new pty has none: no bar)
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = os.environ | {"RAY_AUTH_MODE": "disabled", "COLUMNS": "160"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loom.jobs.cli", "train", "--shards", shards, "--output",
         str(tmp_path / "ck"), "--epochs", "2", "--batch-size", "8", "--dim", "16",
         "--layers", "1", "--heads", "2", "--embed-dims", "8,16"],
        stdout=subprocess.PIPE, stderr=child, env=env, cwd=ROOT)
    os.close(child)
    seen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child side closed: the run is over
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=600)
    os.close(main)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    assert json.loads(out.decode().strip().splitlines()[-1])["counts"]["steps"] == 16
    for epoch in (1, 2):  # a bar per epoch: 64 rows, 8 a step -> 8 steps each
        assert re.search(rf"epoch {epoch}/2: +\d+%.*\| *8/8 ", text), text[-3000:]
    assert re.search(r"loss=\d+\.\d{4}, samples_s=\d", text), text[-3000:]
    assert re.search(r"train epoch 2/2 step 16/16 loss \d\.\d{4} [1-9][\d.]* samples/s eta",
                     text), text[-3000:]
    assert "eta Nones" not in text
