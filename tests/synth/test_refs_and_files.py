"""Media by reference and the offline server's Files and Batch APIs, with the real
google-genai client: nothing over the inline limit is sent inline, uploads are deduped by
content hash and redone when expired, a part that cannot be referenced is a Rejected row."""

from __future__ import annotations

import io
import json
import random
import time

import pytest
from google.genai import errors as genai_errors
from google.genai import types
from loom.schemas.records import Reason
from loom.synth.calls import Call, CallLoop, Unsendable, rejection
from loom.synth.client import LLMConfig, make_client
from loom.synth.offline_server import Faults, server_stats
from loom.synth.refs import Media, References
from loom.transforms import scenes

LIMIT = 100_000  # a small inline limit, so small files exercise the rule
PROMPT = "QUERY_KIND: caption\nWrite search queries for this recording."


@pytest.fixture
def server(offline_llm):
    """server(**faults) -> the URL of a new offline server (conftest stops it)."""
    return lambda **faults: offline_llm(Faults(request_limit_bytes=LIMIT, **faults))


def _wav(seed: int = 0) -> bytes:
    """A scene as a WAV file (about 94 KB: 125 KB as base64, over LIMIT)."""
    from loom.transforms.scenes_media import render_audio

    return render_audio(scenes.RichScene((scenes.Scene("ring", "teal", "large", "bottom",
                                                       "left"),)), random.Random(seed))


def _png() -> bytes:
    rng = random.Random(0)
    return scenes.render_image(scenes.random_scene(rng), rng)


def _loop(url: str, tmp_path, limit: int = LIMIT) -> CallLoop:
    loop = CallLoop(LLMConfig(inline_limit_bytes=limit), str(tmp_path / "cache"), base_url=url)
    loop.setup()
    return loop


def test_over_the_limit_goes_by_reference_once_per_content(server, tmp_path):
    url = server()
    big, small = _wav(), _png()
    loop = _loop(url, tmp_path)
    calls = [Call(f"k{i}", PROMPT, lambda d=d, m=m: [Media(d, m)])
             for i, (d, m) in enumerate([(big, "audio/wav"), (small, "image/png"),
                                         (big, "audio/wav")])]
    try:
        answers, stats = loop.run(calls)
    finally:
        loop.teardown()
    assert all(rejection(a) is None for a in answers), answers
    st = server_stats(url)
    assert st["uploads"] == 1  # the big file twice: one upload; the small one inline
    assert stats["requests"] == 3
    # a second run (new process state) reuses the recorded upload
    again = _loop(url, tmp_path)
    try:
        again.run([Call("k9", PROMPT, lambda: [Media(big, "audio/wav")])])
    finally:
        again.teardown()
    assert server_stats(url)["uploads"] == 1


def test_without_the_rule_the_server_refuses_the_request(server, tmp_path):
    """The planted bug (no size rule: everything inline) fails at the API: 400."""
    url = server()
    loop = _loop(url, tmp_path, limit=10**9)
    try:
        answers, _ = loop.run([Call("k", PROMPT, lambda: [Media(_wav(), "audio/wav")])])
    finally:
        loop.teardown()
    assert rejection(answers[0])[0] == Reason.LLM_ERROR
    assert "payload size exceeds" in rejection(answers[0])[1]


def test_expired_upload_is_uploaded_again(server, tmp_path):
    url = server(file_ttl_s=1.0)
    client = make_client(LLMConfig(), base_url=url)
    data = _wav()
    refs = References(client, "gemini", LIMIT, str(tmp_path / "files"))
    first = refs.reference(Media(data, "audio/wav"))
    time.sleep(1.5)  # the server deletes it; its record says it expired
    with pytest.raises(genai_errors.ClientError) as gone:
        client.models.generate_content(model="gemini-2.5-flash", contents=[types.Content(
            role="user", parts=[types.Part.from_text(text=PROMPT), first])])
    assert gone.value.code == 403
    second = References(client, "gemini", LIMIT, str(tmp_path / "files")).reference(
        Media(data, "audio/wav"))
    assert second.file_data.file_uri != first.file_data.file_uri
    resp = client.models.generate_content(model="gemini-2.5-flash", contents=[types.Content(
        role="user", parts=[types.Part.from_text(text=PROMPT), second])])
    assert resp.text
    assert server_stats(url)["uploads"] == 2


def test_unreferenceable_part_is_a_rejected_row(tmp_path):
    """Vertex reads references only from gs://: a local source over the limit is refused
    with a reason, never sent inline; a gs:// source goes as its own URI."""
    refs = References(None, "vertex", LIMIT, str(tmp_path / "files"), str(tmp_path / "stage"))
    with pytest.raises(Unsendable) as exc:
        refs.place([Media(b"x" * 100_000, "video/mp4", str(tmp_path / "v.mp4"))], PROMPT)
    assert exc.value.reason == Reason.TOO_LARGE and "gs://" in str(exc.value)
    placed = refs.place([Media(b"x" * 100_000, "video/mp4", "gs://bucket/v.mp4")], PROMPT)
    assert placed[0].file_data.file_uri == "gs://bucket/v.mp4"
    small = refs.place([Media(b"x" * 1000, "video/mp4", str(tmp_path / "v.mp4"))], PROMPT)
    assert small[0].inline_data.data == b"x" * 1000


def test_batch_api_with_the_real_client(server, tmp_path):
    """Files upload/get/delete and batches create/get/list: a JSONL file source with
    failed lines, inlined requests, and a job that expires before it runs."""
    # PENDING for 0.5 s: on a quiet machine a 21-line job finished before create() returned.
    url = server(batch_line_failures=0.5, seed=3, batch_delay_s=0.5)
    client = make_client(LLMConfig(), base_url=url)
    req = {"contents": [{"role": "user", "parts": [{"text": "QUERY_KIND: keyword"},
                                                   {"text": "a red circle on grey"}]}]}
    lines = [{"key": f"k{i}", "request": req} for i in range(20)]
    lines.append({"key": "bad", "request": {"contents": []}})  # malformed: a failed line
    src = client.files.upload(file=io.BytesIO("".join(json.dumps(x) + "\n" for x in lines)
                                              .encode()),
                              config=types.UploadFileConfig(mime_type="application/jsonl"))
    assert client.files.get(name=src.name).size_bytes > 0
    big = bytes(range(256)) * (9 * 4096)  # 9 MiB: the SDK sends it as two chunks
    up = client.files.upload(file=io.BytesIO(big),
                             config=types.UploadFileConfig(mime_type="application/jsonl"))
    assert client.files.get(name=up.name).size_bytes == len(big)
    assert client.files.download(file=up.name) == big
    job = client.batches.create(model="gemini-2.5-flash", src=src.name)
    assert job.state.value in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    for _ in range(100):
        job = client.batches.get(name=job.name)
        if job.state.value == "JOB_STATE_SUCCEEDED":
            break
        time.sleep(0.1)
    out = [json.loads(x) for x in client.files.download(file=job.dest.file_name).splitlines()]
    assert {o["key"] for o in out} == {x["key"] for x in lines}
    failed = {o["key"] for o in out if "error" in o}
    assert "bad" in failed and 1 < len(failed) < len(lines)  # partial failure
    assert all(o["response"]["candidates"] for o in out if "response" in o)
    inline = client.batches.create(model="gemini-2.5-flash", src=[types.InlinedRequest(
        model="gemini-2.5-flash", contents=req["contents"], metadata={"key": "x"})])
    assert job.name in {j.name for j in client.batches.list()} | {inline.name}
    client.files.delete(name=src.name)
    with pytest.raises(genai_errors.ClientError):
        client.files.get(name=src.name)
    late = server(batch_delay_s=5.0, batch_ttl_s=0.2)
    c2 = make_client(LLMConfig(), base_url=late)
    j = c2.batches.create(model="gemini-2.5-flash", src=[types.InlinedRequest(
        model="gemini-2.5-flash", contents=req["contents"])])
    time.sleep(0.6)
    assert c2.batches.get(name=j.name).state.value == "JOB_STATE_EXPIRED"


def test_vertex_stages_a_non_gcs_part_under_the_run_prefix(gcs, tmp_path):
    """A part over the limit whose source is local goes as a copy under the run's gs://
    work folder (staged once per content), never inline."""
    from loom.schemas import storage
    from loom.schemas.storage import list_files

    stage = "gs://loom-test/run/_work/media"
    refs = References(None, "vertex", LIMIT, str(tmp_path / "files"), stage)
    data = b"v" * 100_000
    parts = refs.place([Media(data, "video/mp4", str(tmp_path / "v.mp4")),
                        types.Part.from_text(text="caption")], PROMPT)
    uri = parts[0].file_data.file_uri
    assert uri.startswith(stage + "/") and storage.read_bytes(uri) == data
    assert parts[1].text == "caption"
    refs.place([Media(data, "video/mp4", str(tmp_path / "w.mp4"))], PROMPT)
    assert len(list_files(stage)) == 1  # the same bytes: staged once
