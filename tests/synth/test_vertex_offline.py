"""The Vertex AI side of the offline server, with the real google-genai client
(`vertexai=True`, no Google credentials) and the GCS emulator: online calls with media by
gs:// reference, and batch prediction jobs (JSONL in and out on gs://) with their states,
failed lines, cancellation and expiry."""

from __future__ import annotations

import json
import random
import time
import uuid

import pytest
from google.genai import types
from loom.schemas import storage
from loom.schemas.records import Reason
from loom.synth.batch import _by_key, _labelled, request_digest
from loom.synth.calls import Call, CallLoop, rejection
from loom.synth.client import LLMConfig, make_client
from loom.synth.offline_server import Faults, server_stats
from loom.synth.refs import Media
from loom.transforms import scenes

LIMIT = 2048  # a small inline limit: a rendered PNG goes by reference
PROMPT = "QUERY_KIND: caption\nWrite search queries for this picture."
VERTEX = LLMConfig(backend="vertex", project="loom-test", location="us-central1",
                   inline_limit_bytes=LIMIT, retry_attempts=1)
REQ = {"contents": [{"role": "user", "parts": [{"text": "QUERY_KIND: keyword"},
                                               {"text": "a red circle on grey"}]}]}


@pytest.fixture
def prefix(gcs) -> str:
    return f"gs://{gcs.bucket}/vertex-{uuid.uuid4().hex[:8]}"


def _png(scene: scenes.Scene) -> bytes:
    data = scenes.render_image(scene, random.Random(0), side=512)
    assert len(data) * 4 / 3 > LIMIT  # over the limit as base64
    return data


def test_vertex_online_call_reads_gs_media_by_reference(gcs, offline_llm, prefix, tmp_path):
    """A gs:// source goes as its own URI, a local one as a copy staged under the run's
    prefix; the server answers from the bytes it read on GCS (its colour is in the
    queries), and would refuse either sent inline (over its request limit)."""
    url = offline_llm(Faults(request_limit_bytes=LIMIT))
    cyan = _png(scenes.Scene("circle", "cyan", "large", "middle", "center"))
    amber = _png(scenes.Scene("square", "orange", "large", "middle", "center"))
    storage.write_bytes(f"{prefix}/src/cyan.png", cyan)
    loop = CallLoop(VERTEX, str(tmp_path / "cache"), base_url=url,
                    staging_uri=f"{prefix}/_work/media")
    calls = [Call("gs", PROMPT, lambda: [Media(cyan, "image/png", f"{prefix}/src/cyan.png")]),
             Call("local", PROMPT, lambda: [Media(amber, "image/png", str(tmp_path / "a.png"))]),
             Call("gone", PROMPT, lambda: [Media(cyan, "image/png", f"{prefix}/src/gone.png")])]
    try:
        answers, stats = loop.run(calls)
    finally:
        loop.teardown()
    assert rejection(answers[0]) is None and rejection(answers[1]) is None, answers
    assert any("cyan" in q for q in answers[0]["queries"]), answers[0]
    assert any("orange" in q for q in answers[1]["queries"]), answers[1]
    staged = storage.list_files(f"{prefix}/_work/media")
    assert [storage.read_bytes(f.uri) for f in staged] == [amber]  # only the local one
    assert rejection(answers[2])[0] == Reason.LLM_ERROR  # a reference Vertex cannot fetch
    assert "Cannot fetch content" in rejection(answers[2])[1]
    assert stats["requests"] == 2 and server_stats(url)["uploads"] == 0  # no Files API


def test_vertex_route_refuses_a_files_api_reference(gcs, offline_llm):
    """Vertex AI reads references from gs:// only: a Files API URI is a 400 there."""
    url = offline_llm()
    client = make_client(VERTEX, base_url=url)
    with pytest.raises(Exception) as exc:
        client.models.generate_content(model="gemini-2.5-flash", contents=[types.Content(
            role="user", parts=[types.Part.from_text(text=PROMPT), types.Part.from_uri(
                file_uri=f"{url}/v1beta/files/abc", mime_type="image/png")])])
    assert getattr(exc.value, "code", None) == 400 and "gs://" in str(exc.value)


def _wait(client, name: str, states=("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED",
                                     "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED")):
    for _ in range(200):
        job = client.batches.get(name=name)
        if job.state.value in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"{name} still {job.state}")


def test_vertex_batch_jobs_with_the_real_client(gcs, offline_llm, prefix):
    """batchPredictionJobs create/get/list from a gs:// JSONL into a gs:// prefix, with
    failed lines (a seeded share, and a malformed request), a missing input (FAILED) and
    a cancelled job."""
    # A job stays PENDING for 0.5 s: on a quiet machine a 21-line job could finish before
    # create() returns, and the state after create is part of what this test checks.
    url = offline_llm(Faults(batch_line_failures=0.4, seed=3, batch_delay_s=0.5))
    client = make_client(VERTEX, base_url=url)
    lines = [{"key": f"k{i}", "request": REQ | {"labels": {"i": str(i)}}} for i in range(20)]
    lines.append({"key": "bad", "request": {"contents": []}})
    storage.write_bytes(f"{prefix}/in.jsonl", "".join(json.dumps(x) + "\n" for x in lines).encode())
    job = client.batches.create(model="gemini-2.5-flash", src=f"{prefix}/in.jsonl",
                                config={"dest": f"{prefix}/out"})
    assert job.name.startswith("projects/loom-test/locations/us-central1/batchPredictionJobs/")
    assert job.state.value in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    job = _wait(client, job.name)
    assert job.state.value == "JOB_STATE_SUCCEEDED"
    folder = job.output_info.gcs_output_directory
    assert folder.startswith(f"{prefix}/out/prediction-model-")
    out = [json.loads(x) for x in storage.read_bytes(f"{folder}/predictions.jsonl").splitlines()]
    assert len(out) == len(lines)
    failed = [o for o in out if o["status"]]
    assert 1 < len(failed) < len(lines) and all("response" not in o for o in failed)
    assert job.completion_stats.failed_count == len(failed)
    assert job.completion_stats.successful_count == len(lines) - len(failed)
    assert all(o["response"]["candidates"] for o in out if not o["status"])
    # each output line echoes its request (with nulls filled in), not the key
    assert all("key" not in o for o in out)
    assert {request_digest(o["request"]) for o in out} == \
        {request_digest(x["request"]) for x in lines}
    assert job.name in {j.name for j in client.batches.list()}
    missing = client.batches.create(model="gemini-2.5-flash", src=f"{prefix}/none.jsonl",
                                    config={"dest": f"{prefix}/out2"})
    assert _wait(client, missing.name).state.value == "JOB_STATE_FAILED"
    with pytest.raises(Exception) as exc:  # an unknown model: 404, as on Vertex
        client.batches.create(model="no-such-model", src=f"{prefix}/in.jsonl",
                              config={"dest": f"{prefix}/out3"})
    assert getattr(exc.value, "code", None) == 404


def test_vertex_batch_cancel_and_expiry(gcs, offline_llm, prefix):
    storage.write_bytes(f"{prefix}/in.jsonl", (json.dumps({"request": REQ}) + "\n").encode())
    client = make_client(VERTEX, base_url=offline_llm(Faults(batch_delay_s=5.0)))
    job = client.batches.create(model="gemini-2.5-flash", src=f"{prefix}/in.jsonl",
                                config={"dest": f"{prefix}/out"})
    client.batches.cancel(name=job.name)
    assert _wait(client, job.name).state.value == "JOB_STATE_CANCELLED"
    late = make_client(VERTEX, base_url=offline_llm(Faults(batch_delay_s=5.0, batch_ttl_s=0.2)))
    job = late.batches.create(model="gemini-2.5-flash", src=f"{prefix}/in.jsonl",
                              config={"dest": f"{prefix}/out"})
    assert _wait(late, job.name).state.value == "JOB_STATE_EXPIRED"
    assert late.batches.get(name=job.name).output_info is None


def test_output_lines_match_by_key_or_by_echoed_request():
    """A line names its key (Gemini) or echoes its request with null fields (Vertex);
    identical requests share an answer; a line matching nothing is dropped, not guessed."""
    a = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"seed": 1}}
    b = {"contents": [{"role": "user", "parts": [{"text": "y"}]}]}
    requests = {"ka": a, "kb": b, "kc": json.loads(json.dumps(a))}
    echoed = {"contents": [{"parts": [{"text": "x", "fileData": None}], "role": "user"}],
              "generationConfig": {"seed": 1}}
    out = [{"status": "", "request": echoed, "response": {"candidates": []}},
           {"status": "Error 500: boom", "request": b},
           {"status": "", "request": {"contents": []}, "response": {"candidates": []}},
           {"key": "kb", "response": {"candidates": [{}]}}]
    lines = _by_key(out, requests)
    assert set(lines) == {"ka", "kb", "kc"}
    assert lines["ka"] == lines["kc"] == {"response": {"candidates": []}}
    assert lines["kb"] == {"response": {"candidates": [{}]}}  # its answer beats its error
    assert _by_key([{"key": "kb", "error": {"code": 500}}], requests) == \
        {"kb": {"error": {"code": 500}}}
    # Vertex echoes the request with its label: the label names the call, even when the
    # echo is not byte-for-byte the request (here: the seed came back as a float)
    keyed = {"f" * 64: _labelled(a, "f" * 64), "e" * 64: _labelled(a, "e" * 64)}
    echo = json.loads(json.dumps(keyed["e" * 64]))
    echo["generationConfig"]["seed"] = 1.0
    echo["contents"][0]["parts"][0]["fileData"] = None
    got = _by_key([{"status": "", "request": echo, "response": {"candidates": [1]}}], keyed)
    assert got == {"e" * 64: {"response": {"candidates": [1]}}}
    assert echo["labels"] == {"loom_key": "e" * 32}  # a label value: at most 63 characters


def test_server_process_reads_gcs_where_it_is_told(gcs, prefix):
    """`--storage-emulator-host` points a server process (started without the variable)
    at the emulator: a gs:// reference is read there."""
    import os
    import subprocess
    import sys

    png = _png(scenes.Scene("circle", "purple", "large", "middle", "center"))
    storage.write_bytes(f"{prefix}/p.png", png)
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    proc = subprocess.Popen([sys.executable, "-m", "loom.synth.offline_server", "--port", "0",
                             "--storage-emulator-host", gcs.host],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().split()[1]
        client = make_client(VERTEX, base_url=url)
        resp = client.models.generate_content(
            model="gemini-2.5-flash", contents=[types.Content(role="user", parts=[
                types.Part.from_text(text=PROMPT),
                types.Part.from_uri(file_uri=f"{prefix}/p.png", mime_type="image/png")])])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert "purple" in resp.text
