"""Benchmark: synth's LLM calls against the offline server at 200 ms latency.

    .venv/bin/python tests/benchmarks/bench_synth.py [--calls 1600] [--regen-pairs 10000] [--no-engines]

1. Throughput at a concurrency limit of 32 (target >= 0.8 x 32 / 0.2 s = 128 req/s):
   - bare loop: google-genai `client.aio.models.generate_content` + asyncio.Semaphore(32),
     no cache, no retry, no parsing beyond the SDK's;
   - loom stage: `SynthStage.process_batch` (one worker: cache lookups, retry wrapper,
     limiter, parsing, cache writes) on a fresh cache;
   - engines: `run_synth` on Beam (2 workers x 16) and Ray (2 actors x 16) over an
     ingested corpus; engine start-up (a run whose every call is cached, 1 example) is
     timed apart and subtracted.
2. Regenerating unchanged pairs: the same stage over `--regen-pairs / 4` examples with an
   empty cache (uncached), then a fresh stage over the same cache (every call a hit).
The server is `synth.offline_server` as a subprocess (`Faults(latency_s=0.2)`), text
examples only (the server's image analysis would make the server, not loom, the limit
on 2 shared cores). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from google.genai import types  # noqa: E402
from loom.schemas.records import EXAMPLE, empty_part, to_table  # noqa: E402
from loom.synth.client import LLMConfig, QueryOutput, make_client  # noqa: E402
from loom.synth.limits import RateLimits  # noqa: E402
from loom.synth.offline_server import Faults, offline_server, server_stats  # noqa: E402
from loom.synth.prompts import PromptSet  # noqa: E402
from loom.synth.stage import SynthConfig, SynthStage  # noqa: E402
from loom.transforms import scenes  # noqa: E402

LATENCY = 0.2
CONCURRENCY = 32
KINDS = {"text": ["keyword", "question"]}


def examples(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = f"{scenes.describe(scenes.random_scene(rng), rng)} Item {i}."
        eid = hashlib.sha256(text.encode()).hexdigest()
        rows.append({"id": eid, "modality": "text", "parts": [empty_part("text") | {"text": text}],
                     "source_uris": [f"mem://{eid[:8]}"], "mime": "text/plain",
                     "size_bytes": len(text), "metadata": "{}"})
    return rows


def bare(url: str, rows: list[dict]) -> float:
    cfg = LLMConfig()
    prompts = PromptSet.load(["keyword", "question"])
    client = make_client(cfg, base_url=url)
    config = types.GenerateContentConfig(response_mime_type="application/json",
                                         response_schema=QueryOutput, temperature=0.0, seed=0,
                                         max_output_tokens=256)

    async def go() -> float:
        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(row, kind):
            contents = [types.Content(role="user", parts=[
                types.Part.from_text(text=prompts.text(kind)),
                types.Part.from_text(text=row["parts"][0]["text"])])]
            async with sem:
                r = await client.aio.models.generate_content(model=cfg.model, contents=contents,
                                                             config=config)
            assert r.text

        await one(rows[0], "keyword")  # session warm-up, not timed
        t = time.perf_counter()
        await asyncio.gather(*(one(r, k) for r in rows for k in KINDS["text"]))
        return time.perf_counter() - t

    return asyncio.run(go())


def stage_run(url: str, cache: str, rows: list[dict]) -> tuple[float, dict]:
    cfg = SynthConfig(cache_uri=cache, base_url=url, kinds=KINDS,
                      limits=RateLimits(concurrency=CONCURRENCY))
    stage = SynthStage(cfg)
    stage.setup()
    batch = to_table(rows, EXAMPLE).to_batches()[0]
    t = time.perf_counter()
    out = stage.process_batch(batch)
    dt = time.perf_counter() - t
    stage.teardown()
    stats = out["stats"].to_pylist()[0] | {"pairs": out["pairs"].num_rows,
                                            "rejected": out["rejected"].num_rows}
    return dt, stats


def engines(url: str, tmp: pathlib.Path, n_texts: int) -> list[tuple[str, float, float, int]]:
    from loom.jobs.corpus import generate_corpus
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.runner import Engine
    from loom.pipelines.synth import run_synth

    generate_corpus(str(tmp / "corpus"), 0, n_texts, seed=3, bad_files=False)
    ex = run_ingest(str(tmp / "corpus" / "media"), str(tmp / "ex"))["uri"]
    generate_corpus(str(tmp / "one"), 0, 1, seed=4, bad_files=False)
    one = run_ingest(str(tmp / "one" / "media"), str(tmp / "one_ex"))["uri"]
    out = []
    llm = LLMConfig(base_url=url)
    limits = RateLimits(concurrency=CONCURRENCY // 2)  # per worker: 2 workers x 16 = 32
    for engine in (Engine.BEAM, Engine.RAY):
        if engine == Engine.RAY:
            from loom.pipelines.ray.session import ensure_ray

            t = time.perf_counter()
            ensure_ray(num_cpus=2, object_store_mb=256)
            print(f"ray.init: {time.perf_counter() - t:.2f} s (not in the figures below)")
        root = tmp / f"pairs-{engine.value}"
        run_synth(one, str(root / "warm"), llm, engine, limits=limits)  # caches the 1 example
        t = time.perf_counter()
        run_synth(one, str(root / "warm"), llm, engine, limits=limits, heldout_fraction=0.3)
        startup = time.perf_counter() - t  # every call cached: engine + driver overhead
        t = time.perf_counter()
        res = run_synth(ex, str(root / "full"), llm, engine, limits=limits, rows_per_item=64)
        total = time.perf_counter() - t
        out.append((engine.value, total, startup, res["counts"]["llm_calls"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=1600)
    ap.add_argument("--regen-pairs", type=int, default=10000)
    ap.add_argument("--engine-texts", type=int, default=400)
    ap.add_argument("--no-engines", action="store_true")
    args = ap.parse_args()
    rows = examples(args.calls // 2)
    target = CONCURRENCY / LATENCY
    with tempfile.TemporaryDirectory() as tmpd, offline_server(faults=Faults(latency_s=LATENCY)) as url:
        tmp = pathlib.Path(tmpd)
        t_bare = bare(url, rows)
        t_stage, st = stage_run(url, str(tmp / "cache-tp"), examples(args.calls // 2, seed=1))
        n = len(rows) * 2
        print(f"server at {LATENCY * 1000:.0f} ms, concurrency {CONCURRENCY}: ideal {target:.0f} req/s")
        print(f"| bare loop (aio + semaphore) | {n} | {t_bare:.2f} | {n / t_bare:.1f} | "
              f"{n / t_bare / target:.2f} |")
        print(f"| loom SynthStage (1 worker) | {st['llm_calls']} | {t_stage:.2f} | "
              f"{st['llm_calls'] / t_stage:.1f} | {st['llm_calls'] / t_stage / target:.2f} |")
        if not args.no_engines:
            for name, total, startup, calls in engines(url, tmp, args.engine_texts):
                run = total - startup
                print(f"| run_synth {name} (2 x 16) | {calls} | {total:.2f} (start-up {startup:.2f}) "
                      f"| {calls / run:.1f} excl. start-up | {calls / run / target:.2f} |")
        regen = examples(args.regen_pairs // 4, seed=2)  # 2 kinds x ~2 queries per example
        cache = str(tmp / "cache-regen")
        t_cold, cold = stage_run(url, cache, regen)
        t_warm, warm = stage_run(url, cache, regen)
        assert warm["llm_calls"] == 0 and warm["pairs"] == cold["pairs"], (cold, warm)
        print(f"regen {cold['pairs']} pairs ({cold['llm_calls']} calls): uncached {t_cold:.2f} s, "
              f"cached {t_warm:.3f} s, ratio {t_warm / t_cold:.4f} (target < 0.05)")
        print("server:", {k: v for k, v in server_stats(url).items()
                          if k in ("requests", "answered", "max_in_flight")})


if __name__ == "__main__":
    main()
