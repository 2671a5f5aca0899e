"""Synth under 30% injected faults ends with exactly a clean run's pairs; a SIGKILLed run
resumes without paying again for the calls it finished (counted on the server)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.synth.client import LLMConfig
from loom.synth.offline_server import Faults, server_stats

from tests.procs import sigkill_when

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLS = ["pair_id", "kind", "query_text", "task", "positive_id", "split", "prompt_version"]


def _pairs(uri: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(uri)
    return sorted(mf.read_table(vdir, manifest, "pairs", columns=COLS).to_pylist(),
                  key=lambda r: r["pair_id"])


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("synthf")
    generate_corpus(str(tmp / "c"), 10, 10, seed=21, bad_files=False)
    return run_ingest(str(tmp / "c" / "media"), str(tmp / "ex"))["uri"]


@pytest.fixture
def server(offline_llm):
    return offline_llm


def test_thirty_percent_faults_end_with_the_clean_pairs(tmp_path, examples, server):
    clean = run_synth(examples, str(tmp_path / "clean"))
    url = server(Faults(share=0.3, seed=4, retry_after_s=0.05, slow_s=3.5))
    llm = LLMConfig(base_url=url, timeout_s=3.0, retry_initial_delay_s=0.02, retry_jitter_s=0.05)
    faulty = run_synth(examples, str(tmp_path / "faulty"), llm)
    stats = server_stats(url)
    assert sum(stats["faults"].values()) >= 0.2 * stats["requests"]
    assert len(stats["faults"]) == 6  # every kind was drawn
    got, want = _pairs(faulty["uri"]), _pairs(clean["uri"])
    assert got == want and len({p["pair_id"] for p in got}) == len(got)
    assert faulty["counts"]["rejected"] == clean["counts"]["rejected"] == 0
    assert faulty["counts"]["retries"] >= sum(stats["faults"].values())
    assert faulty["counts"]["llm_calls"] == clean["counts"]["llm_calls"]
    assert faulty["usage"]["input_tokens"] == clean["usage"]["input_tokens"] > 0


def _synth_cli(examples: str, out: str, url: str) -> subprocess.Popen:
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "loom.jobs.cli", "synth", "--examples", examples,
                             "--output", out, "--base-url", url, "--concurrency", "4"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _cached(out: pathlib.Path) -> dict[str, str]:
    """cache entry -> the responseId the server gave it."""
    found = {}
    for p in (out / "_llm_cache").glob("*/*.json"):
        found[p.name] = json.loads(p.read_text()).get("response_id") or ""
    return found


@pytest.mark.slow
def test_sigkill_then_resume_pays_once_per_finished_call(tmp_path, examples, server):
    from tests.synth_calls import calls_needed

    url = server(Faults(latency_s=0.25))
    out = tmp_path / "pairs"
    total = calls_needed(examples)
    proc = _synth_cli(examples, str(out), url)
    sigkill_when(proc, lambda: len(_cached(out)) >= 6, 180, "finished call")
    with pytest.raises(FileNotFoundError):
        mf.resolve_input(str(out))
    time.sleep(0.5)  # calls in flight at the kill reach the server's books
    finished = _cached(out)
    before = server_stats(url)["answered"]
    assert 6 <= len(finished) < total

    proc = _synth_cli(examples, str(out), url)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stats = server_stats(url)
    rerun_ids = stats["answered_ids"][before:]
    assert not set(rerun_ids) & set(finished.values())  # no finished call was paid again
    assert len(rerun_ids) == total - len(finished)
    assert json.loads(stdout.strip().splitlines()[-1])["counts"]["llm_calls"] == len(rerun_ids)
    assert _pairs(str(out)) == _pairs(run_synth(examples, str(tmp_path / "clean"))["uri"])


def test_ray_and_beam_write_the_same_pairs(tmp_path, examples, ray_session):
    from loom.pipelines.runner import Engine

    beam = run_synth(examples, str(tmp_path / "beam"), rows_per_item=8)
    ray = run_synth(examples, str(tmp_path / "ray"), engine=Engine.RAY, rows_per_item=8)
    assert _pairs(ray["uri"]) == _pairs(beam["uri"]) and len(_pairs(beam["uri"])) > 0
    assert ray["counts"] == beam["counts"]


def test_items_grow_past_max_items_and_write_the_same_pairs(tmp_path, examples, monkeypatch):
    """Past MAX_ITEMS work items, items get more rows: fewer Pairs parts, the same pairs."""
    from loom.pipelines import synth

    small = run_synth(examples, str(tmp_path / "small"), rows_per_item=2)
    vdir, manifest = mf.resolve_input(examples)
    rows = manifest.rows("examples")
    monkeypatch.setattr(synth, "MAX_ITEMS", 3)
    big = run_synth(examples, str(tmp_path / "big"), rows_per_item=2)
    parts = {name: len(mf.resolve_input(r["uri"])[1].tables["pairs"])
             for name, r in (("small", small), ("big", big))}
    files = len(manifest.tables["examples"])
    assert parts["small"] >= rows // 2 > 3 + files  # one part per 2 Examples
    assert parts["big"] <= 3 + files  # each file's slices of ceil(rows / 3) Examples
    assert _pairs(big["uri"]) == _pairs(small["uri"]) and len(_pairs(big["uri"])) > 0
    assert big["counts"] == small["counts"]
