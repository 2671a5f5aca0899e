"""`synth --mode batch` against the offline server's Batch API, and the cost plan: the
same pairs as online, one cache for both modes, failed lines and expired jobs recovered,
a run killed between submit and collect resumed without resubmitting, and budgets priced
at the Batch API's price."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import BudgetExceeded, run_synth
from loom.schemas import manifest as mf
from loom.synth.batch import BatchSettings
from loom.synth.budget import Budget, plan_table, price_for
from loom.synth.client import LLMConfig
from loom.synth.offline_server import Faults, server_stats

FAST = BatchSettings(poll_initial_s=0.05, poll_max_s=0.5)


def _pairs(uri: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(uri)
    rows = mf.read_table(vdir, manifest, "pairs").to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in ("input_tokens", "output_tokens")}
                   for r in rows), key=lambda r: r["pair_id"])


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    generate_corpus(str(d / "c"), 4, 4, seed=21, bad_files=False)
    return run_ingest(str(d / "c" / "media"), str(d / "ex"))["uri"]


@pytest.fixture
def server(offline_llm):
    """server(**faults) -> the URL of a new offline server (conftest stops it)."""
    return lambda **faults: offline_llm(Faults(**faults))


@pytest.fixture(scope="module")
def online(examples, tmp_path_factory):
    return run_synth(examples, str(tmp_path_factory.mktemp("online") / "p"))


def test_batch_writes_the_online_pairs_and_shares_the_cache(examples, online, server, tmp_path):
    url = server(batch_line_failures=0.3, seed=5)
    root = str(tmp_path / "p")
    done = run_synth(examples, root, LLMConfig(base_url=url), mode="batch", batch=FAST)
    c = done["counts"]
    st = server_stats(url)
    assert _pairs(done["uri"]) == _pairs(online["uri"])
    assert c["batch_lines_failed"] > 0 and st["batch_lines_failed"] == c["batch_lines_failed"]
    assert st["batches_created"] == c["batch_jobs"] == 2  # a second round for failed lines
    assert c["llm_calls"] == st["requests"]  # online: only what both rounds left over
    assert c["batch_llm_calls"] == st["batch_lines"] - st["batch_lines_failed"]
    assert done["usage"]["batch_cost_usd"] > 0
    # the same cache key as online: an online run over the same cache pays nothing
    again = run_synth(examples, root, LLMConfig(base_url=url), heldout_fraction=0.3)
    assert again["counts"]["llm_calls"] == 0 and again["counts"]["cache_hits"] > 0


def test_expired_jobs_fall_back_to_online(examples, online, server, tmp_path):
    url = server(batch_delay_s=5.0, batch_ttl_s=0.1)
    done = run_synth(examples, str(tmp_path / "p"), LLMConfig(base_url=url), mode="batch",
                     batch=FAST)
    c = done["counts"]
    assert c["batch_jobs"] == c["batch_jobs_failed"] == 2  # both rounds expired
    assert c["batch_llm_calls"] == 0 and c["cache_hits"] == 0 and c["llm_calls"] > 0
    assert _pairs(done["uri"]) == _pairs(online["uri"])


@pytest.mark.slow
def test_killed_between_submit_and_collect_resumes_without_resubmitting(
        examples, online, server, tmp_path):
    url = server(batch_delay_s=4.0)
    root = tmp_path / "p"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("loom")), "synth", "--examples", examples,
         "--output", str(root), "--mode", "batch", "--base-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(str(root / "*" / "_work" / "batch" / "jobs.json")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert server_stats(url)["batches_created"] == 1
    done = run_synth(examples, str(root), LLMConfig(base_url=url), mode="batch", batch=FAST)
    c = done["counts"]
    assert server_stats(url)["batches_created"] == 1  # collected, never resubmitted
    assert c["batch_jobs_resumed"] == 1 and c["batch_jobs"] == 0
    assert _pairs(done["uri"]) == _pairs(online["uri"])


def test_dry_run_plan_counts_media_and_prices_batch(examples, tmp_path):
    root = str(tmp_path / "p")
    plan = run_synth(examples, root, dry_run=True)["plan"]
    rows = plan["modalities"]
    ex = mf.resolve_input(examples)
    table = mf.read_table(*ex, "examples").to_pylist()
    images = [e for e in table if e["modality"] == "image"]
    assert rows["image"]["examples"] == len(images)
    # 3 query kinds per image, each image one tile (<= 768 px) at 258 tokens
    assert rows["image"]["media_tokens"] == 3 * 258 * len(images)
    assert rows["text"]["media_tokens"] == 0
    assert rows["total"]["batch_usd"] == pytest.approx(rows["total"]["online_usd"] / 2, rel=1e-4)
    assert plan["cost_usd_for_mode"] == rows["total"]["online_usd"]
    text = plan_table(plan)
    assert text.splitlines()[0].split()[:3] == ["modality", "examples", "calls"]
    assert "image" in text and "total" in text
    assert price_for("gemini-2.5-flash").batch().input == 0.15
    # --max-cost between the batch and the online worst case: online stops, batch runs
    cost = rows["total"]["online_usd"] * 0.75
    with pytest.raises(BudgetExceeded):
        run_synth(examples, str(tmp_path / "o"), budget=Budget(max_cost=cost))
    done = run_synth(examples, str(tmp_path / "b"), budget=Budget(max_cost=cost), mode="batch",
                     batch=FAST)
    assert done["counts"]["pairs"] > 0
    assert json.dumps(plan)  # the plan is JSON as it is printed


def test_dry_run_plans_a_gemini_spend_without_credentials(examples, tmp_path, monkeypatch):
    # The plan is what a team reads before it asks for a key: no key, no client, no call.
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    root = str(tmp_path / "p")
    out = run_synth(examples, root, LLMConfig(backend="gemini"), dry_run=True)
    assert out["dry_run"] and out["plan"]["modalities"]["total"]["online_usd"] > 0
    assert not os.path.exists(root)  # nothing written
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):  # a real run still needs one
        run_synth(examples, root, LLMConfig(backend="gemini"))
