"""Batch mode: the uncached calls of a run through the Gemini Batch API.

Each round writes the calls not yet cached as JSONL (`{"key": cache key, "request":
GenerateContentRequest}` lines), uploads it through the Files API, submits one batch job
per `lines_per_job` lines, polls them with backoff, reads the output JSONL and feeds every
answer through `CallLoop.collect` (the online path's refusal, schema check, repair and
cache), so the online pass that follows finds them cached, and a later online run reuses
them (same cache key). Failed lines and jobs that expired or failed are tried again in
the next round; what is left after the last round goes online.

Resumable: every submitted job is recorded in `work_uri/jobs.json` (with the JSONL it
was given) as soon as it exists; a rerun of a killed run collects those jobs instead of
submitting them again.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import tenacity
from google.genai import types
from loom.schemas import storage
from loom.synth.calls import Call, CallLoop, new_stats

log = logging.getLogger(__name__)
DONE = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                  "JOB_STATE_EXPIRED"})


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
        self.loop.setup()
        if self.loop.llm.backend == "vertex":
            raise ValueError("synth --mode batch supports the gemini and offline backends; "
                             "vertex batch jobs (gs:// JSONL) are not implemented yet")
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
            data = "".join(json.dumps({"key": k, "request": requests[k]}) + "\n"
                           for k in chunk).encode()
            name = f"requests-{index:05d}.jsonl"
            storage.write_atomic(storage.join(self.work_uri, name), data)  # for the repairs
            f = client.files.upload(file=io.BytesIO(data), config=types.UploadFileConfig(
                mime_type="application/jsonl", display_name=f"loom-batch-{index}"))
            job = client.batches.create(model=self.model, src=f.name,
                                        config=types.CreateBatchJobConfig(
                                            display_name=f"loom-synth-{index}"))
            record = {"name": job.name, "file": f.name, "requests": name, "lines": len(chunk)}
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

    def _collect(self, calls: list[Call], records: list[dict], jobs: list[dict]) -> None:
        client = self.loop._client
        for record in records:
            job = self._wait(record["name"])
            state = getattr(job.state, "value", job.state)
            lines: dict[str, dict] = {}
            if state == "JOB_STATE_SUCCEEDED" and job.dest is not None and job.dest.file_name:
                out = client.files.download(file=job.dest.file_name)
                for raw in out.decode().splitlines():
                    if raw.strip():
                        line = json.loads(raw)
                        lines[str(line.get("key"))] = line
            else:
                log.warning("batch job %s ended %s: its lines go to the next round",
                            record["name"], state)
                self.counts["batch_jobs_failed"] += 1
            requests = {}
            for raw in storage.read_bytes(storage.join(self.work_uri, record["requests"])).splitlines():
                if raw.strip():
                    line = json.loads(raw)
                    requests[line["key"]] = line["request"]
            answered = sum(1 for v in lines.values() if "response" in v)
            self.counts["batch_lines"] += record["lines"]
            self.counts["batch_lines_failed"] += record["lines"] - answered
            for k, v in self.loop.collect(calls, lines, requests).items():
                self.stats[k] += v
            record["collected"] = True
            record["state"] = state
            self._save(jobs)
