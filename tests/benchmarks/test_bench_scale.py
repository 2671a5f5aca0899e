"""bench_scale at a tiny size: the JSON has the issue's shape, every number is measured
(positive), synth's prefilled cache answers every call it makes (the child raises on a
miss), and a rerun skips what OUT already holds."""

from __future__ import annotations

import json

from tests.benchmarks.bench_scale import TIMELINE_ENV, run

KEYS = {"driver_peak_mb", "worker_peak_mb", "worker_peak_uss_mb", "wall_s", "objects_written",
        "objects_kept"}


def test_bench_scale_tiny(tmp_path, ray_session, capsys, monkeypatch):
    out = tmp_path / "scale.json"
    monkeypatch.setenv(TIMELINE_ENV, str(tmp_path / "tl"))
    got = run([50], ["ingest", "shard", "synth"], str(tmp_path / "work"), str(out), isolate=False)
    assert json.loads(out.read_text()) == got
    assert set(got) == {"stages"} and set(got["stages"]) == {"ingest", "shard", "synth"}
    for stage, by_size in got["stages"].items():
        assert set(by_size) == {"50"}, stage
        m = by_size["50"]
        assert set(m) == KEYS | {"worker_peak_task", "driver_peak_at"}, stage
        # the timeline names where the driver was: inside the stage's entry point, in loom
        # code only (not the benchmark's own frames, nor a library's)
        where = [line.split("\t")[2] for line in
                 (tmp_path / f"tl-{stage}-50.tsv").read_text().splitlines()]
        assert any(w.startswith(f"run_{stage}") for w in where), (stage, set(where))
        assert m["worker_peak_task"].startswith("ray::"), stage  # the task at the peak
        assert all(m[k] > 0 for k in KEYS), (stage, m)
        assert m["objects_written"] >= m["objects_kept"], (stage, m)
        assert m["worker_peak_uss_mb"] <= m["worker_peak_mb"], (stage, m)  # USS is part of RSS
        assert isinstance(m["objects_written"], int)
    capsys.readouterr()
    again = run([50], ["ingest", "shard", "synth"], str(tmp_path / "work"), str(out), isolate=False)
    assert again == got and "ingest 50" not in capsys.readouterr().out  # nothing re-measured
