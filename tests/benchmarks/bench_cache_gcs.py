"""Benchmark: reading a batch of synth's cached answers from gs:// (the emulator).

    .venv/bin/python tests/benchmarks/bench_cache_gcs.py [--entries 2000] [--repeats 3] [--rtt-ms 20]

A rerun of synth over an unchanged corpus is all cache hits: one object per answer. Timed,
interleaved, best of `--repeats`, over the same `--entries` objects:
- bare serial: google-cloud-storage `blob.download_as_bytes` + `json.loads`, one after
  another (what a plain loop does);
- bare pool: the same in a `ThreadPoolExecutor` of 16 (what a careful script does);
- loom get: `ResponseCache.get` one key after another (synth before get_many);
- loom get_many: `ResponseCache.get_many` (what `CallLoop.run` uses).
The last lines print `ratio get_many/bare-pool X.XXx` and `ratio get_many/get X.XXx`
(throughput: above 1 is faster). The emulator is a local process that answers one request
at a time in well under a millisecond; a bucket answers many at once, each after tens of
milliseconds. `--rtt-ms` puts a proxy in front of the emulator that holds each request
that long before passing it on (0: no proxy), a round trip's latency; the emulator
still answers one at a time. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.synth.cache import GET_THREADS, ResponseCache  # noqa: E402

from tests.gcs import GcsEmulator, free_port  # noqa: E402


def start_delay_proxy(target_port: int, rtt_s: float) -> int:
    """A TCP proxy on 127.0.0.1 (a daemon thread) that holds every chunk a client sends
    for `rtt_s` before it reaches the emulator: each request pays one round trip."""
    port = free_port()
    ready = threading.Event()

    async def pipe(reader, writer, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(c_reader, c_writer) -> None:
        s_reader, s_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(c_reader, s_writer, rtt_s), pipe(s_reader, c_writer, 0))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    ready.wait(10)
    return port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    args = ap.parse_args()
    with GcsEmulator(bucket="bench") as gcs:
        env = gcs.env()
        if args.rtt_ms:
            host, _, port = env["STORAGE_EMULATOR_HOST"].rpartition(":")
            proxy = start_delay_proxy(int(port), args.rtt_ms / 1000)
            env["STORAGE_EMULATOR_HOST"] = f"{host}:{proxy}"
        os.environ.update(env)
        root = f"gs://bench/cache-{uuid.uuid4().hex[:8]}"
        cache = ResponseCache(root)
        keys = [f"{i:064x}" for i in range(args.entries)]
        with ThreadPoolExecutor(4) as pool:  # set-up, not timed (the emulator is one thread)
            list(pool.map(lambda k: cache.put(k, {"queries": [f"query {k[-6:]}"] * 2}), keys))
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs_storage

        bucket = gcs_storage.Client(project="bench", credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": env[
                                        "STORAGE_EMULATOR_HOST"]}).bucket("bench")
        prefix = root.removeprefix("gs://bench/")
        names = [f"{prefix}/{k[:2]}/{k}.json" for k in keys]

        def bare_one(name: str) -> dict:
            return json.loads(bucket.blob(name).download_as_bytes())

        def bare_serial() -> list:
            return [bare_one(n) for n in names]

        def bare_pool() -> list:
            with ThreadPoolExecutor(GET_THREADS) as pool:
                return list(pool.map(bare_one, names))

        def loom_get() -> list:
            c = ResponseCache(root)
            return [c.get(k) for k in keys]

        def loom_get_many() -> list:
            return ResponseCache(root).get_many(keys)

        runs = {"bare serial": bare_serial, "bare pool": bare_pool, "loom get": loom_get,
                "loom get_many": loom_get_many}
        best = dict.fromkeys(runs, float("inf"))
        want = None
        for _ in range(args.repeats):
            for name, fn in runs.items():
                t = time.perf_counter()
                got = fn()
                best[name] = min(best[name], time.perf_counter() - t)
                want = want or got
                if got != want:
                    raise SystemExit(f"{name} read other answers")
    print(f"{args.entries} entries, round trip {args.rtt_ms:g} ms, best of {args.repeats}")
    for name, s in best.items():
        print(f"{name:14s} {args.entries / s:8.0f} entries/s  ({s:.2f} s)")
    print(f"ratio get_many/bare-pool {best['bare pool'] / best['loom get_many']:.2f}x")
    print(f"ratio get_many/get {best['loom get'] / best['loom get_many']:.2f}x")


if __name__ == "__main__":
    main()
