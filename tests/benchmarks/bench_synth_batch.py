"""Benchmark: `synth --mode batch` against online mode, on the offline server.

    PYTHONPATH=$PWD .venv/bin/python tests/benchmarks/bench_synth_batch.py [--requests 10000]

Text examples (two query kinds each, so `--requests / 2` examples) written as an ingest
version; one offline server (a subprocess, 200 ms per online answer, as bench_synth.py).
Each mode is a full `run_synth` on Beam into a fresh root, timed from the call to all
pairs written: online at a concurrency of 32 (2 workers x 16); batch submits JSONL
through the Files API, polls, collects every answer through the online path's parsing
and cache, then writes the pairs from the cache (the server answers batch lines without
the per-request latency, as a batch backend is not bound by one request's round trip).
`--modes batch,online,vertex-batch,batch-gs` adds a Vertex AI row: the same batch run
with `--llm vertex` against the same server, its output root (JSONL, cache, pairs) on a
GCS emulator (started first, so the server reads and writes it); `batch-gs` is the
Gemini-protocol batch run with its output root on the same emulator (the like-for-like
comparison: the emulator's per-object cost dominates both). Prints one line per mode and a ratio line.
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.pipelines.synth import run_synth  # noqa: E402
from loom.schemas import manifest as mf  # noqa: E402
from loom.schemas.records import EXAMPLE, to_table  # noqa: E402
from loom.synth.batch import BatchSettings  # noqa: E402
from loom.synth.client import LLMConfig  # noqa: E402
from loom.synth.limits import RateLimits  # noqa: E402
from loom.synth.offline_server import Faults, offline_server, server_stats  # noqa: E402

from tests.benchmarks.bench_synth import CONCURRENCY, KINDS, LATENCY, examples  # noqa: E402


def write_examples(root: str, n: int) -> str:
    """`n` text Examples as an ingest version (what run_synth reads)."""
    table = to_table(examples(n), EXAMPLE)
    version = mf.version_id("ingest", [], {"bench_synth_batch": n})
    writer = mf.VersionWriter(root, "ingest", version)
    record = writer.write_part("examples", "part-00000", table)
    writer.commit({"examples": [record]}, {"examples": n}, {"bench": n}, {})
    return writer.dir


def timed_run(ex: str, root: str, url: str, mode: str) -> tuple[float, dict]:
    vertex = mode == "vertex-batch"
    llm = (LLMConfig(backend="vertex", project="loom-bench", base_url=url) if vertex
           else LLMConfig(base_url=url))
    t = time.perf_counter()
    out = run_synth(ex, root, llm, kinds=KINDS, mode="online" if mode == "online" else "batch",
                    limits=RateLimits(concurrency=CONCURRENCY),
                    batch=BatchSettings(poll_initial_s=0.5, poll_max_s=5.0))
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--modes", default="batch,online",
                        help="comma-separated: batch, online, vertex-batch")
    args = parser.parse_args()
    n = args.requests // 2
    modes = args.modes.split(",")
    with contextlib.ExitStack() as stack:
        if {"vertex-batch", "batch-gs"} & set(modes):  # first: the server inherits its host
            from tests.gcs import GcsEmulator

            os.environ.update(stack.enter_context(GcsEmulator(bucket="loom-bench")).env())
        d = stack.enter_context(tempfile.TemporaryDirectory())
        url = stack.enter_context(offline_server(faults=Faults(latency_s=LATENCY)))
        ex = write_examples(f"{d}/ex", n)
        results = {}
        for mode in modes:
            before = server_stats(url)
            root = f"gs://loom-bench/{mode}" if mode in ("vertex-batch", "batch-gs") \
                else f"{d}/{mode}"
            secs, out = timed_run(ex, root, url, mode)
            after = server_stats(url)
            c = out["counts"]
            results[mode] = secs
            print(f"{mode}: {2 * n} requests, {c['pairs']} pairs in {secs:.1f} s "
                  f"({2 * n / secs:.1f} req/s); online requests "
                  f"{after['requests'] - before['requests']}, batch jobs "
                  f"{_jobs(after) - _jobs(before)}, batch lines "
                  f"{_lines(after) - _lines(before)}", flush=True)
        for mode in (m for m in modes if m != "online" and "online" in results):
            print(f"ratio: {mode} {results[mode]:.1f} s / online {results['online']:.1f} s = "
                  f"{results[mode] / results['online']:.2f} (online at concurrency "
                  f"{CONCURRENCY}, {LATENCY * 1000:.0f} ms per answer)")


def _jobs(st: dict) -> int:
    return st["batches_created"] + st["vertex_jobs_created"]


def _lines(st: dict) -> int:
    return st["batch_lines"] + st["vertex_lines"]


if __name__ == "__main__":
    main()
