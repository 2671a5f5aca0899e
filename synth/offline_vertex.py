"""The offline server's Vertex AI side: gs:// media and batch prediction jobs over GCS.

Vertex AI reads media by reference only from Cloud Storage and runs batch jobs from a
JSONL file on `gs://` into a `gs://` output prefix. Here both go through
`schemas.storage`, so `STORAGE_EMULATOR_HOST` points them at the GCS emulator (or at a
real bucket). A job (`batchPredictionJobs`, numeric ids as on Vertex) is JOB_STATE_PENDING
for `batch_delay_s`, then RUNNING while it answers every line, writing
`{prefix}/prediction-model-{time}/predictions.jsonl`: one line per input line, in
Vertex's documented shape (`status` empty or an error message, `processed_time`, the
`request` echoed with null fields filled in, `response` when it succeeded). A seeded
`line_failures` share of lines fail; an input that cannot be read fails the job; a job
that would finish past `batch_ttl_s` EXPIRES; a cancelled one writes what it answered.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from collections.abc import Callable

from loom.schemas import storage
from loom.synth.offline_files import ApiError, _iso

DONE = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                  "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"})


def inline_gcs(request: dict) -> dict:
    """The request with each gs:// fileData part replaced by its bytes. Vertex AI reads
    references from Cloud Storage only: any other URI (a Files API one) is a 400."""
    for content in request.get("contents") or []:
        for i, part in enumerate((content or {}).get("parts") or []):
            ref = (part.get("fileData") or part.get("file_data")) if isinstance(part, dict) else None
            if not ref:
                continue
            uri = str(ref.get("fileUri") or ref.get("file_uri") or "")
            mime = ref.get("mimeType") or ref.get("mime_type")
            if not uri.startswith("gs://"):
                raise ApiError(400, f"Unsupported file uri: {uri[:200]} (Vertex AI reads "
                                    "file references from gs:// only)")
            if not mime:
                raise ApiError(400, "fileData.mimeType is required")
            try:
                data = storage.read_bytes(uri)
            except (FileNotFoundError, OSError):
                raise ApiError(400, f"Cannot fetch content from the provided URL: {uri}"
                               ) from None
            content["parts"][i] = {"inlineData": {"mimeType": mime,
                                                  "data": base64.b64encode(data).decode()}}
    return request


def _echo(request: object) -> object:
    """The request as Vertex echoes it in an output line: each part with all of its
    fields, the unset ones null (a reader must not expect its own bytes back)."""
    if not isinstance(request, dict):
        return request
    out = json.loads(json.dumps(request))
    for content in out.get("contents") or []:
        for part in (content or {}).get("parts") or [] if isinstance(content, dict) else []:
            if isinstance(part, dict):
                for field in ("text", "fileData", "inlineData"):
                    part.setdefault(field, None)
    return out


class VertexJobs:
    """Batch prediction jobs of one server, shared by its handler threads."""

    def __init__(self, delay_s: float, ttl_s: float, line_failures: float, seed: int):
        self.delay_s, self.ttl_s, self.line_failures = delay_s, ttl_s, line_failures
        self.rng = random.Random(seed + 1)
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}  # numeric id -> BatchPredictionJob JSON
        self.cancelled: set[str] = set()
        self.counts = {"vertex_jobs_created": 0, "vertex_lines": 0, "vertex_lines_failed": 0}

    def create(self, parent: str, body: dict, known: frozenset[str],
               answer: Callable[[dict], dict]) -> dict:
        model = str(body.get("model") or "")
        if model.rsplit("/", 1)[-1] not in known:
            raise ApiError(404, f"Publisher Model `{parent}/{model}` not found.")
        src = body.get("inputConfig") or {}
        uris = (src.get("gcsSource") or {}).get("uris") or []
        dest = ((body.get("outputConfig") or {}).get("gcsDestination") or {}).get(
            "outputUriPrefix") or ""
        if src.get("instancesFormat") != "jsonl" or not uris or \
                not all(str(u).startswith("gs://") for u in uris):
            raise ApiError(400, "inputConfig: instancesFormat jsonl with gcsSource.uris on "
                                "gs:// is required")
        if not dest.startswith("gs://"):
            raise ApiError(400, "outputConfig.gcsDestination.outputUriPrefix on gs:// is "
                                "required")
        with self.lock:
            jid = str(self.rng.randrange(10**18, 10**19))
        now = time.time()
        job = {"name": f"{parent}/batchPredictionJobs/{jid}",
               "displayName": body.get("displayName") or jid, "model": model,
               "inputConfig": src, "outputConfig": body["outputConfig"],
               "state": "JOB_STATE_PENDING", "createTime": _iso(now), "updateTime": _iso(now)}
        with self.lock:
            self.jobs[jid] = job
            self.counts["vertex_jobs_created"] += 1
        threading.Thread(target=self._process, args=(jid, list(uris), dest, answer),
                         daemon=True).start()
        return json.loads(json.dumps(job))

    def get(self, jid: str) -> dict:
        with self.lock:
            job = self.jobs.get(jid)
            if job is None:
                raise ApiError(404, f"The BatchPredictionJob {jid} does not exist.")
            return json.loads(json.dumps(job))

    def list(self) -> dict:
        with self.lock:
            return {"batchPredictionJobs": [json.loads(json.dumps(j))
                                            for j in self.jobs.values()]}

    def cancel(self, jid: str) -> dict:
        job = self.get(jid)
        if job["state"] not in DONE:
            with self.lock:
                self.cancelled.add(jid)
            self._set(jid, "JOB_STATE_CANCELLING")
        return {}

    def delete(self, jid: str) -> dict:
        job = self.get(jid)
        if job["state"] not in DONE:
            raise ApiError(400, "The BatchPredictionJob is running: cancel it first.")
        with self.lock:
            self.jobs.pop(jid, None)
        return {"name": f"{job['name']}/operations/{jid}", "done": True}

    def _set(self, jid: str, state: str, **extra) -> None:
        with self.lock:
            job = self.jobs[jid]
            job |= {"state": state, "updateTime": _iso(time.time())} | extra
            if state in DONE:
                job["endTime"] = job["updateTime"]

    def _is_cancelled(self, jid: str) -> bool:
        with self.lock:
            return jid in self.cancelled

    def _process(self, jid: str, uris: list[str], dest: str,
                 answer: Callable[[dict], dict]) -> None:
        if self.delay_s > self.ttl_s:  # not run in time: the job expires
            time.sleep(self.ttl_s)
            self._set(jid, "JOB_STATE_EXPIRED", error={
                "code": 4, "message": "The batch job did not run before it expired."})
            return
        deadline = time.monotonic() + self.delay_s
        while time.monotonic() < deadline:
            if self._is_cancelled(jid):
                self._set(jid, "JOB_STATE_CANCELLED")
                return
            time.sleep(min(0.05, self.delay_s))
        self._set(jid, "JOB_STATE_RUNNING", startTime=_iso(time.time()))
        try:
            lines = [json.loads(x) for u in uris
                     for x in storage.read_bytes(u).decode().splitlines() if x.strip()]
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            self._set(jid, "JOB_STATE_FAILED", error={
                "code": 3, "message": f"Failed to read the input JSONL: {type(exc).__name__}"})
            return
        out, failed = self._answer(jid, lines, answer)
        folder = storage.join(dest, f"prediction-model-{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime())}"
                                    f".{jid[-6:]}Z")
        storage.write_bytes(storage.join(folder, "predictions.jsonl"),
                            "".join(json.dumps(o) + "\n" for o in out).encode())
        with self.lock:
            self.counts["vertex_lines"] += len(out)
            self.counts["vertex_lines_failed"] += failed
        state = "JOB_STATE_CANCELLED" if len(out) < len(lines) else "JOB_STATE_SUCCEEDED"
        self._set(jid, state, outputInfo={"gcsOutputDirectory": folder}, completionStats={
            "successfulCount": str(len(out) - failed), "failedCount": str(failed),
            "incompleteCount": str(len(lines) - len(out))})

    def _answer(self, jid: str, lines: list[dict],
                answer: Callable[[dict], dict]) -> tuple[list[dict], int]:
        out, failed = [], 0
        for line in lines:
            if self._is_cancelled(jid):
                break  # a cancelled job exports what it answered
            request = line.get("request") if isinstance(line, dict) else None
            row = {"status": "", "processed_time": _iso(time.time()), "request": _echo(request)}
            with self.lock:
                fail = self.rng.random() < self.line_failures
            try:
                if fail:
                    raise ApiError(500, "Internal error encountered.")
                if not isinstance(request, dict):
                    raise ApiError(400, "the line has no request object")
                row["response"] = answer(json.loads(json.dumps(request)))
            except ApiError as exc:
                failed += 1
                row["status"] = f"Error {exc.code}: {exc}"
            except Exception as exc:  # noqa: BLE001 - a model bug fails the line, not the job
                failed += 1
                row["status"] = f"Error 500: {type(exc).__name__}"
            out.append(row)
        return out, failed
