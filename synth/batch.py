"""Batch mode: the uncached calls of a run through the Gemini Batch API or Vertex AI
batch prediction.

Each round writes the calls not yet cached as JSONL (`{"key": cache key, "request":
GenerateContentRequest}` lines), one file per `lines_per_job` lines, and submits a batch
job for each: on `gemini` (and the offline server) the file goes through the Files API
and the output comes back as a Files API file; on `vertex` the file is written under the
run's gs:// work folder, the job reads it from there and writes `predictions.jsonl` under
an output prefix next to it. Output lines are matched to their call by `key`; Vertex
does not echo a line's own fields but echoes its request, so there each request carries
its key as a label (`labels.loom_key`, as label values are at most 63 characters: the
key's first 32), and failing that the request itself matches (null fields dropped). The jobs are polled with backoff; every answer goes through
`CallLoop.collect` (the online path's refusal, schema check, repair and
cache), so the online pass that follows finds them cached, and a later online run reuses
them (same cache key). Failed lines and jobs that expired or failed are tried again in
the next round; what is left after the last round goes online.

Resumable: every submitted job is recorded in `work_uri/jobs.json` (with the JSONL it
was given) as soon as it exists; a rerun of a killed run collects those jobs instead of
submitting them again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging

import tenacity
from google.genai import types
from loom.schemas import storage
from loom.synth.calls import Call, CallLoop, new_stats

log = logging.getLogger(__name__)
DONE = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                  "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"})


def check_work_uri(backend: str, work_uri: str) -> None:
    """Vertex AI batch jobs read their input from and write their output to Cloud
    Storage: the run's work folder must be on gs:// (ValueError, exit 2, before any work)."""
    if backend == "vertex" and not work_uri.startswith("gs://"):
        raise ValueError("synth --mode batch on vertex needs the output on gs:// (Vertex AI "
                         f"batch jobs read their JSONL from Cloud Storage); got {work_uri}")


def request_digest(request: object) -> str:
    """A request's identity for matching an output line that echoes it: canonical JSON
    with null fields dropped (Vertex fills in the unset fields of each part)."""
    def clean(v: object) -> object:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return hashlib.sha256(json.dumps(clean(request), sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    lines_per_job: int = 10_000
    rounds: int = 2  # submissions of what is still uncached (failed lines, expired jobs)
    poll_initial_s: float = 1.0
    poll_max_s: float = 60.0
    max_wait_s: float = 48 * 3600.0  # Gemini's target: within 24 hours


class BatchRun:
    """Submit, poll and collect the batch jobs of one synth version."""

    def __init__(self, loop: CallLoop, model: str, work_uri: str,
                 settings: BatchSettings | None = None):
        self.loop, self.model, self.work_uri = loop, model, work_uri
        self.settings = settings or BatchSettings()
        self.counts = {"batch_jobs": 0, "batch_jobs_resumed": 0, "batch_jobs_failed": 0,
                       "batch_lines": 0, "batch_lines_failed": 0}
        self.stats = new_stats()

    @property
    def _jobs_uri(self) -> str:
        return storage.join(self.work_uri, "jobs.json")

    def _jobs(self) -> list[dict]:
        if not storage.exists(self._jobs_uri):
            return []
        return json.loads(storage.read_bytes(self._jobs_uri))

    def _save(self, jobs: list[dict]) -> None:
        storage.write_atomic(self._jobs_uri, json.dumps(jobs, indent=1).encode())

    def run(self, calls: list[Call]) -> dict[str, int]:
        """Answers for `calls` into the cache; returns the batch counts."""
        check_work_uri(self.loop.llm.backend, self.work_uri)
        self.loop.setup()
        jobs = self._jobs()
        pending = [j for j in jobs if not j.get("collected")]
        self.counts["batch_jobs_resumed"] = len(pending)
        if pending:  # a killed run's jobs: collect them, never submit them again
            self._collect(calls, pending, jobs)
        for _ in range(self.settings.rounds):
            requests = self.loop.requests(calls)
            if not requests:
                break
            new = self._submit(requests, jobs)
            self._collect(calls, new, jobs)
        return self.counts | {f"batch_{k}": v for k, v in self.stats.items()}

    def _submit(self, requests: dict[str, dict], jobs: list[dict]) -> list[dict]:
        client = self.loop._client
        keys = sorted(requests)
        n = self.settings.lines_per_job
        new = []
        for start in range(0, len(keys), n):
            index = len(jobs)
            chunk = keys[start:start + n]
            vertex = self.loop.llm.backend == "vertex"
            data = "".join(json.dumps({"key": k, "request": _labelled(requests[k], k) if vertex
                                       else requests[k]}) + "\n" for k in chunk).encode()
            name = f"requests-{index:05d}.jsonl"
            uri = storage.join(self.work_uri, name)
            storage.write_atomic(uri, data)  # for the repairs; Vertex's job reads it
            if vertex:
                dest = storage.join(self.work_uri, f"output-{index:05d}")
                job = client.batches.create(model=self.model, src=uri,
                                            config=types.CreateBatchJobConfig(
                                                display_name=f"loom-synth-{index}", dest=dest))
                record = {"name": job.name, "requests": name, "lines": len(chunk),
                          "dest": dest}
            else:
                f = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
                    mime_type="application/jsonl", display_name=f"loom-batch-{index}"))
                job = client.batches.create(model=self.model, src=f.name,
                                            config=types.CreateBatchJobConfig(
                                                display_name=f"loom-synth-{index}"))
                record = {"name": job.name, "file": f.name, "requests": name,
                          "lines": len(chunk)}
            jobs.append(record)
            self._save(jobs)  # before anything else can fail: a rerun finds it by id
            self.counts["batch_jobs"] += 1
            new.append(record)
        return new

    def _wait(self, name: str) -> types.BatchJob:
        s = self.settings

        @tenacity.retry(stop=tenacity.stop_after_delay(s.max_wait_s), reraise=True,
                        wait=tenacity.wait_exponential(multiplier=s.poll_initial_s,
                                                       max=s.poll_max_s),
                        retry=tenacity.retry_if_result(
                            lambda j: getattr(j.state, "value", j.state) not in DONE))
        def poll() -> types.BatchJob:
            return self.loop._client.batches.get(name=name)

        return poll()

    def _output(self, job: types.BatchJob, state: str) -> list[dict]:
        """The job's output lines: a Files API file (Gemini, once SUCCEEDED), or the
        predictions JSONL under its gs:// output folder (Vertex: what it answered, also
        when it failed or was cancelled part way)."""
        raw = b""
        if self.loop.llm.backend == "vertex":
            folder = job.output_info.gcs_output_directory if job.output_info else None
            if folder:
                raw = b"".join(storage.read_bytes(f.uri) + b"\n" for f in
                               storage.list_files(folder, ".jsonl"))
        elif state == "JOB_STATE_SUCCEEDED" and job.dest is not None and job.dest.file_name:
            raw = self.loop._client.files.download(file=job.dest.file_name)
        return [json.loads(x) for x in raw.decode().splitlines() if x.strip()]

    def _collect(self, calls: list[Call], records: list[dict], jobs: list[dict]) -> None:
        for record in records:
            job = self._wait(record["name"])
            state = getattr(job.state, "value", job.state)
            if state != "JOB_STATE_SUCCEEDED":
                log.warning("batch job %s ended %s: its unanswered lines go to the next round",
                            record["name"], state)
                self.counts["batch_jobs_failed"] += 1
            requests = {}
            for raw in storage.read_bytes(storage.join(self.work_uri, record["requests"])).splitlines():
                if raw.strip():
                    line = json.loads(raw)
                    requests[line["key"]] = line["request"]
            lines = _by_key(self._output(job, state), requests)
            answered = sum(1 for v in lines.values() if "response" in v)
            self.counts["batch_lines"] += record["lines"]
            self.counts["batch_lines_failed"] += record["lines"] - answered
            for k, v in self.loop.collect(calls, lines, requests).items():
                self.stats[k] += v
            record["collected"] = True
            record["state"] = state
            self._save(jobs)


LABEL = "loom_key"


def _labelled(request: dict, key: str) -> dict:
    """A Vertex request that names its call: Vertex echoes the request, labels included."""
    return request | {"labels": (request.get("labels") or {}) | {LABEL: key[:32]}}


def _label(line: dict) -> str | None:
    request = line.get("request")
    labels = request.get("labels") if isinstance(request, dict) else None
    return labels.get(LABEL) if isinstance(labels, dict) else None


def _by_key(out: list[dict], requests: dict[str, dict]) -> dict[str, dict]:
    """Output lines by cache key, as `{"response": ...}` or `{"error": ...}`. A line
    names its key, or echoes its request (Vertex: `status` is empty or the error): by its
    label, else by the request itself."""
    keys_of: dict[str, list[str]] = {}
    by_label: dict[str, list[str]] = {}
    for k, req in requests.items():
        keys_of.setdefault(request_digest(req), []).append(k)
        by_label.setdefault(k[:32], []).append(k)
    lines: dict[str, dict] = {}
    for line in out:
        if line.get("key") is not None:
            keys = [str(line["key"])]
        elif (label := _label(line)) is not None:
            keys = by_label.get(str(label), [])
        else:
            keys = keys_of.get(request_digest(line.get("request")), [])
        if line.get("response") is not None and not line.get("status"):
            value = {"response": line["response"]}
        else:
            value = {"error": line.get("error") or line.get("status") or "no response"}
        for k in keys:  # identical requests (two examples, one content) share an answer
            if "response" not in lines.get(k, {}):
                lines[k] = value
    return lines
