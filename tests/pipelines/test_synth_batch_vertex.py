"""`synth --mode batch` on the `vertex` backend, end to end with the real google-genai
client (`vertexai=True`) against the offline server and the GCS emulator: JSONL written
under the run's gs:// prefix, batch prediction jobs, output read back from gs://, the same
pairs as online and one cache for both modes, failed lines recovered, media over the
inline limit as gs:// references (the source's own URI, or a staged copy deleted after),
a kill between submit and collect resumed by job id, and budgets at the batch price."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import BudgetExceeded, run_synth
from loom.schemas import storage
from loom.synth.batch import BatchSettings
from loom.synth.budget import Budget
from loom.synth.client import LLMConfig
from loom.synth.offline_server import Faults, server_stats
from loom.transforms import scenes

from tests.pipelines.test_synth_batch import _pairs

FAST = BatchSettings(poll_initial_s=0.05, poll_max_s=0.5)
LIMIT = 3000  # a text request fits inline; a 512-px picture (about 3.5 KB as base64) does not
VERTEX = {"backend": "vertex", "project": "loom-test", "location": "us-central1",
          "inline_limit_bytes": LIMIT}
TEXTS = ("A lighthouse keeper logs the storms of one long winter on the northern coast.",
         "Notes on baking rye bread: a sour starter, a slow rise, a very hot oven.",
         "The committee approved the new bridge after a year of public hearings.")


def _corpus(root: str) -> None:
    """Four 512-px pictures and three texts (local or gs://)."""
    rng = random.Random(7)
    for i, (shape, color) in enumerate([("circle", "cyan"), ("square", "orange"),
                                        ("triangle", "purple"), ("diamond", "green")]):
        png = scenes.render_image(scenes.Scene(shape, color, "large", "middle", "center"), rng,
                                  side=512)
        storage.write_bytes(f"{root}/images/img-{i}.png", png)
    for i, text in enumerate(TEXTS):
        storage.write_bytes(f"{root}/texts/doc-{i}.txt", text.encode())


@pytest.fixture(scope="module")
def base(gcs) -> str:
    return f"gs://{gcs.bucket}/synth-vertex-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def gs_examples(base):
    """Examples whose sources are on gs:// (Vertex reads them there, as they are)."""
    _corpus(f"{base}/corpus")
    return run_ingest(f"{base}/corpus", f"{base}/examples")["uri"]


@pytest.fixture(scope="module")
def local_examples(tmp_path_factory, gcs):
    """Examples whose sources are local files (Vertex gets staged copies)."""
    d = tmp_path_factory.mktemp("vcorpus")
    _corpus(str(d / "media"))
    return run_ingest(str(d / "media"), str(d / "ex"))["uri"]


@pytest.fixture
def server(offline_llm):
    """An offline server that refuses a picture sent inline (as Vertex refuses a request
    over its limit): only references get a picture through."""
    return lambda **faults: offline_llm(Faults(request_limit_bytes=LIMIT + 1000, **faults))


def test_vertex_batch_writes_the_online_pairs_and_shares_the_cache(gs_examples, base, server):
    url = server(batch_line_failures=0.3, seed=5)
    llm = LLMConfig(base_url=url, **VERTEX)
    online = run_synth(gs_examples, f"{base}/online", llm)
    assert online["counts"]["rejected"] == 0 and online["counts"]["pairs"] > 0
    before = server_stats(url)
    root = f"{base}/batch"
    done = run_synth(gs_examples, root, llm, mode="batch", batch=FAST)
    c, st = done["counts"], server_stats(url)
    assert _pairs(done["uri"]) == _pairs(online["uri"])
    assert st["vertex_jobs_created"] == c["batch_jobs"] == 2  # a second round: failed lines
    assert c["batch_lines_failed"] > 0 and st["vertex_lines_failed"] == c["batch_lines_failed"]
    assert c["batch_llm_calls"] == st["vertex_lines"] - st["vertex_lines_failed"]
    assert c["llm_calls"] == st["requests"] - before["requests"]  # online: the leftovers
    assert st["uploads"] == 0 and st["batches_created"] == 0  # nothing through the Files API
    assert done["usage"]["batch_cost_usd"] > 0
    # the jobs read their JSONL under the run's prefix; the work folder is gone after commit
    assert storage.list_files(storage.join(done["uri"], "_work")) == []
    # the same cache key as online: an online vertex run over the same cache pays nothing
    again = run_synth(gs_examples, root, llm, heldout_fraction=0.3)
    assert again["counts"]["llm_calls"] == 0 and again["counts"]["cache_hits"] > 0


def test_vertex_batch_needs_gs_output(local_examples, tmp_path, server):
    with pytest.raises(ValueError, match="gs://"):
        run_synth(local_examples, str(tmp_path / "p"),
                  LLMConfig(base_url=server(), **VERTEX), mode="batch", batch=FAST)


@pytest.mark.slow
def test_vertex_killed_between_submit_and_collect_resumes_without_resubmitting(
        local_examples, base, server, gcs):
    """A run killed while its job is pending (the CLI, SIGKILL) is collected by job id on
    the rerun, never submitted again."""
    url = server(batch_delay_s=6.0)
    root = f"{base}/killed"
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("loom")), "synth", "--examples", local_examples,
         "--output", root, "--mode", "batch", "--llm", "vertex", "--project", "loom-test",
         "--base-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=os.environ | gcs.env())
    try:
        deadline = time.monotonic() + 180
        while not [f for f in storage.list_files(root, "jobs.json")]:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    jobs_file = storage.list_files(root, "jobs.json")[0].uri
    (job,) = json.loads(storage.read_bytes(jobs_file))
    assert job["name"].startswith("projects/loom-test/locations/us-central1/batchPredictionJobs/")
    assert server_stats(url)["vertex_jobs_created"] == 1
    assert storage.exists(jobs_file.rsplit("/", 1)[0] + "/requests-00000.jsonl")
    llm = LLMConfig(base_url=url, backend="vertex", project="loom-test")  # as the CLI's
    done = run_synth(local_examples, root, llm, mode="batch", batch=FAST)
    c = done["counts"]
    assert server_stats(url)["vertex_jobs_created"] == 1  # collected, never resubmitted
    assert c["batch_jobs_resumed"] == 1 and c["batch_jobs"] == 0 and c["llm_calls"] == 0
    assert c["pairs"] > 0 and c["rejected"] == 0
    assert storage.list_files(storage.join(done["uri"], "_work")) == []


@pytest.mark.parametrize("backend", ["gemini", "vertex"])
def test_max_cost_in_batch_mode_is_priced_at_the_batch_rate(
        backend, local_examples, base, server, monkeypatch):
    """A --max-cost between the batch and the online worst case: online stops (exit 3),
    batch runs, on both cloud backends."""
    url = server()
    if backend == "gemini":
        monkeypatch.setenv("GEMINI_API_KEY", "offline-test-key")
        llm = LLMConfig(backend="gemini", base_url=url, inline_limit_bytes=LIMIT)
    else:
        llm = LLMConfig(base_url=url, **VERTEX)
    root = f"{base}/budget-{backend}"
    plan = run_synth(local_examples, root, llm, dry_run=True)["plan"]
    total = plan["modalities"]["total"]
    assert total["batch_usd"] == pytest.approx(total["online_usd"] / 2, rel=1e-4)
    cost = total["online_usd"] * 0.75
    with pytest.raises(BudgetExceeded):
        run_synth(local_examples, f"{root}/online", llm, budget=Budget(max_cost=cost))
    done = run_synth(local_examples, f"{root}/batch", llm, budget=Budget(max_cost=cost),
                     mode="batch", batch=FAST)
    assert done["counts"]["pairs"] > 0 and done["counts"]["batch_jobs"] >= 1
    assert 0 < done["usage"]["cost_usd"] <= cost
    # pictures over the limit went by reference (inline, the server would refuse them):
    # Files API uploads on gemini, staged gs:// copies on vertex, deleted after the commit
    assert done["counts"]["rejected"] == 0
    assert (server_stats(url)["uploads"] > 0) == (backend == "gemini")
    assert storage.list_files(storage.join(done["uri"], "_work")) == []
