"""A call budget is never exceeded; the run stops (exit 3) and a rerun resumes it."""

from __future__ import annotations

import json

import pytest
from loom.jobs.cli import app
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import BudgetExceeded, run_synth
from loom.schemas import manifest as mf
from typer.testing import CliRunner

from tests.checkpoints import examples_spec, tiny_checkpoint
from tests.synth_calls import calls_needed


def _pairs(uri: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(uri)
    return sorted(mf.read_table(vdir, manifest, "pairs").to_pylist(), key=lambda r: r["pair_id"])


def test_budget_stops_and_resumes_to_a_clean_runs_pairs(tmp_path):
    generate_corpus(str(tmp_path / "c"), 6, 6, seed=12, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    needed = calls_needed(ex["uri"])
    root = str(tmp_path / "pairs")
    assert run_synth(ex["uri"], root, dry_run=True)["counts"]["llm_calls_needed"] == needed
    spent = 0
    for _ in range(needed):  # each round may pay at most 17 calls (worst case: each repaired)
        try:
            done = run_synth(ex["uri"], root, max_calls=17)
            spent += done["llm_calls"]
            break
        except BudgetExceeded as e:
            calls = e.payload["counts"]["llm_calls"]
            assert 0 < calls <= 17 and e.payload["usage"]["requests"] <= 17
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


def test_token_and_cost_budgets_never_exceeded_and_usage_totalled(tmp_path):
    from loom.synth.budget import Budget

    generate_corpus(str(tmp_path / "c"), 4, 4, seed=14, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    root = str(tmp_path / "pairs")
    est = run_synth(ex["uri"], root, dry_run=True)["estimate"]
    assert est["llm_calls_needed"] == calls_needed(ex["uri"])
    assert est["input_tokens_worst_case"] > 0 and est["cost_usd_worst_case"] > 0
    tokens = (est["input_tokens_worst_case"] + est["output_tokens_worst_case"]) // 3
    with pytest.raises(BudgetExceeded) as stop:
        run_synth(ex["uri"], root, budget=Budget(max_tokens=tokens))
    used = stop.value.payload["usage"]
    assert 0 < used["input_tokens"] + used["output_tokens"] <= tokens and used["within_budget"]
    cost = est["cost_usd_worst_case"] / 3
    with pytest.raises(BudgetExceeded) as stop:
        run_synth(ex["uri"], root, budget=Budget(max_cost=cost))
    assert stop.value.payload["usage"]["cost_usd"] <= cost
    done = run_synth(ex["uri"], root)  # resumes: pays only for what is missing
    clean = run_synth(ex["uri"], str(tmp_path / "clean"))
    assert _pairs(done["uri"]) == _pairs(clean["uri"])
    assert done["llm_calls"] < clean["llm_calls"]
    # usage_metadata per row; the run's total is the sum over its calls
    rows = _pairs(clean["uri"])
    # one call per (example, kind): a describe row's example is its query side
    per_call = {((r.get("query_ref") or {}).get("example_id") or r["positive_id"], r["kind"]):
                (r["input_tokens"], r["output_tokens"]) for r in rows}
    assert sum(i for i, _ in per_call.values()) == clean["usage"]["input_tokens"]
    assert sum(o for _, o in per_call.values()) == clean["usage"]["output_tokens"]
    assert clean["counts"]["input_tokens"] == clean["usage"]["input_tokens"]


@pytest.mark.slow
def test_roundtrip_filter_with_a_checkpoint(tmp_path):

    from loom.synth.filters import FilterConfig

    generate_corpus(str(tmp_path / "c"), 6, 6, seed=15, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    ckpts = str(tmp_path / "ckpt")
    tiny_checkpoint(ckpts, "run-a", examples_spec(ex["uri"]))
    base = run_synth(ex["uri"], str(tmp_path / "p"))
    strict = run_synth(ex["uri"], str(tmp_path / "p"), checkpoint="run-a", checkpoint_root=ckpts,
                       filters=FilterConfig(roundtrip_k=1))
    loose = run_synth(ex["uri"], str(tmp_path / "p"), checkpoint="run-a", checkpoint_root=ckpts,
                      filters=FilterConfig(roundtrip_k=1000))
    assert strict["llm_calls"] == loose["llm_calls"] == 0  # filters reuse the cached answers
    assert loose["counts"]["filtered_roundtrip"] == 0 and loose["counts"]["pairs"] == base["counts"]["pairs"]
    dropped = strict["counts"]["filtered_roundtrip"]
    assert 0 < dropped < base["counts"]["pairs"]  # an untrained encoder misses some at k=1
    assert strict["counts"]["pairs"] == base["counts"]["pairs"] - dropped
    for run in (base, strict):  # the stage's count less what the round trip dropped
        assert run["counts"]["heldout_pairs"] == sum(
            r["split"] == "heldout" for r in _pairs(run["uri"]))
    assert strict["counts"]["heldout_pairs"] < base["counts"]["heldout_pairs"]
    kept = {r["pair_id"] for r in _pairs(strict["uri"])}
    assert kept < {r["pair_id"] for r in _pairs(base["uri"])}
