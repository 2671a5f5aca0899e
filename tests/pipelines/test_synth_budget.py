"""A call budget is never exceeded; the run stops (exit 3) and a rerun resumes it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from jobs.corpus import generate_corpus
from pipelines.ingest import run_ingest
from pipelines.synth import BudgetExceeded, run_synth
from schemas import manifest as mf


def _pairs(uri: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(uri)
    return sorted(mf.read_table(vdir, manifest, "pairs").to_pylist(), key=lambda r: r["pair_id"])


def test_budget_stops_and_resumes_to_a_clean_runs_pairs(tmp_path):
    generate_corpus(str(tmp_path / "c"), 6, 6, seed=12, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    needed = 2 * ex["counts"]["examples"]
    root = str(tmp_path / "pairs")
    assert run_synth(ex["uri"], root, dry_run=True)["counts"]["llm_calls_needed"] == needed
    spent = 0
    for _ in range(needed):  # each round may pay at most 9 calls (worst case: each repaired)
        try:
            done = run_synth(ex["uri"], root, max_calls=9)
            spent += done["llm_calls"]
            break
        except BudgetExceeded as e:
            calls = e.payload["counts"]["llm_calls"]
            assert 0 < calls <= 9 and e.payload["usage"]["requests"] <= 9
            spent += calls
            with pytest.raises(FileNotFoundError):
                mf.resolve_input(root)  # nothing visible until the run completes
    assert spent == needed  # never paid twice for a finished call
    clean = run_synth(ex["uri"], str(tmp_path / "clean"))
    assert _pairs(done["uri"]) == _pairs(clean["uri"])
    assert run_synth(ex["uri"], root, dry_run=True)["reused"] is True


def test_cli_budget_exit_code_3(tmp_path):
    generate_corpus(str(tmp_path / "c"), 3, 3, seed=13, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    res = CliRunner().invoke(app, ["synth", "--examples", ex["uri"], "--output",
                                   str(tmp_path / "p"), "--max-calls", "2"])
    assert res.exit_code == 3, res.output
    last = json.loads([ln for ln in res.output.splitlines() if ln.startswith("{")][-1])
    assert last["stopped"] == "budget" and last["counts"]["llm_calls"] <= 2
