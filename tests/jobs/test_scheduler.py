"""`loom scheduler`: due slots run once, never twice across restarts, never overlapping their
own previous run; outcomes are recorded. The clock is passed in: nothing here sleeps on cron."""

from __future__ import annotations

import datetime as dt
import json
import sys

import pytest
from loom.jobs.cli import app
from loom.jobs.scheduler import claim, connect, load_schedules, runs, tick
from typer.testing import CliRunner

UTC = dt.timezone.utc


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def _file(tmp_path, cron: str = "0 3 * * *", spec: str = "job.yaml") -> str:
    path = tmp_path / "schedules.yaml"
    path.write_text(f"schedules:\n  - {{name: nightly, spec: {spec}, cron: '{cron}'}}\n")
    return str(path)


def _py(code: str):
    return lambda spec: [sys.executable, "-c", code, spec]


def _finish(procs) -> None:
    for p in procs:
        assert p.wait(timeout=120) == 0


def test_due_slot_runs_once_and_not_again_after_restart(tmp_path):
    path = _file(tmp_path)
    ok = _py("import sys; print('ran', sys.argv[1])")
    assert tick(path, at("2026-01-01T02:00:00"), ok) == []  # first seen: nothing due yet
    _finish(tick(path, at("2026-01-01T03:00:30"), ok))
    (run,) = runs(path)
    assert (run["slot"], run["status"], run["exit_code"]) == ("2026-01-01T03:00:00+00:00",
                                                              "succeeded", 0)
    assert "ran" in open(run["log"]).read() and run["log"].endswith(".log")
    # a restarted scheduler (a new call, same state file) does not run the slot again
    assert tick(path, at("2026-01-01T03:07:00"), ok) == []
    assert tick(path, at("2026-01-01T23:59:00"), ok) == []
    _finish(tick(path, at("2026-01-02T03:00:00"), ok))
    assert [r["status"] for r in runs(path)] == ["succeeded", "succeeded"]


def test_a_claimed_slot_is_never_rerun(tmp_path):
    """A crash after the claim and before the start: the restart leaves the slot alone."""
    path = _file(tmp_path)
    tick(path, at("2026-01-01T02:00:00"), _py("pass"))
    _, _, state = load_schedules(path)
    with connect(state) as con:
        assert claim(con, "nightly", "2026-01-01T03:00:00+00:00", at("2026-01-01T03:00:01"))
    assert tick(path, at("2026-01-01T03:00:05"), _py("pass")) == []
    assert [r["status"] for r in runs(path)] == ["claimed"]


def test_no_overlap_with_its_own_previous_run(tmp_path):
    path = _file(tmp_path, cron="* * * * *")
    gate = tmp_path / "gate"
    slow = _py(f"import os, time\nfor _ in range(600):\n    if os.path.exists({str(gate)!r}):"
               "\n        break\n    time.sleep(0.1)")
    first = tick(path, at("2026-01-01T10:00:00"), slow)
    assert len(first) == 1
    _, _, state = load_schedules(path)
    for _ in range(300):  # the first run holds the lock once it is `running`
        if [r["status"] for r in runs(path)] == ["running"]:
            break
        __import__("time").sleep(0.1)
    second = tick(path, at("2026-01-01T10:01:00"), slow)
    _finish(second)
    assert [r["status"] for r in runs(path)] == ["running", "skipped_overlap"]
    gate.write_text("go")
    _finish(first)
    assert [r["status"] for r in runs(path)] == ["succeeded", "skipped_overlap"]
    _finish(tick(path, at("2026-01-01T10:02:00"), slow))  # free again: it runs
    assert [r["status"] for r in runs(path)][-1] == "succeeded"


def test_failure_is_recorded_with_its_exit_code(tmp_path):
    path = _file(tmp_path, cron="*/5 * * * *")
    tick(path, at("2026-01-01T09:58:00"), _py("raise SystemExit(2)"))
    procs = tick(path, at("2026-01-01T10:00:00"), _py("raise SystemExit(2)"))
    assert [p.wait(timeout=120) for p in procs] == [2]  # the exec wrapper passes it on
    (run,) = runs(path)
    assert (run["status"], run["exit_code"]) == ("failed", 2)


def test_bad_schedules_exit_2(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("schedules:\n  - {name: a, spec: x.yaml, cron: '99 * * * *'}\n")
    res = CliRunner().invoke(app, ["scheduler", str(path), "--once"])
    assert res.exit_code == 2, res.output


@pytest.mark.slow
def test_cli_runs_a_real_loom_run(tmp_path):
    from loom.jobs.corpus import generate_corpus

    media = tmp_path / "corpus"
    generate_corpus(str(media), 3, 3, seed=0, bad_files=False)
    (tmp_path / "job.yaml").write_text(
        f"name: tiny\nworkdir: {tmp_path / 'work'}\nstages:\n"
        f"  - {{stage: ingest, id: ingest, input: {media}}}\n")
    path = _file(tmp_path, cron="0 * * * *")
    for now in ("2026-01-01T09:30:00", "2026-01-01T10:00:10"):
        res = CliRunner().invoke(app, ["scheduler", path, "--once", "--wait", "--now", now])
        assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["counts"] == {"succeeded": 1}, open(out["runs"][0]["log"]).read()[-3000:]
    assert (tmp_path / "work" / "ingest").is_dir()
