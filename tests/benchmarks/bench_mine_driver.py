"""Benchmark: the mine driver's peak memory and wall time on a generated corpus.

    .venv/bin/python tests/benchmarks/bench_mine_driver.py --n 20000 --workdir DIR [--json OUT]

A small real corpus (`generate_corpus` -> `run_ingest` -> `run_synth`, offline) is the
template; its Examples are copied to `--n` rows (48 px images with the copy's number in
their first pixels, and text, changed per copy, so no two copies share a digest) over files of 1,000 rows, and its
Pairs with them (ids, positives and query refs renamed, split recomputed from the new
groups). `run_mine` then runs on the local Ray session with a fresh, untrained checkpoint
and a fresh cache; a thread samples the driver's USS (private memory: object-store pages
the driver maps do not count) every 50 ms. Reported: peak USS above the baseline before
the run, wall time, counts. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from tests.benchmarks.peak import Peak  # noqa: E402

FILE_ROWS = 1000


def build(workdir: pathlib.Path, n: int) -> tuple[str, str, str]:
    """(pairs version, examples version, checkpoint root) for N Examples, made once."""
    import numpy as np
    import pyarrow as pa
    from loom.jobs.corpus import generate_corpus
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.synth import run_synth
    from loom.schemas import manifest as mf
    from loom.schemas import storage
    from loom.schemas.records import EXAMPLE, PAIR
    from loom.schemas.spec import SPEC_FILE
    from loom.schemas.splits import example_split
    from loom.transforms.pixels import encode_frames, part_frames

    from tests.checkpoints import examples_spec, tiny_checkpoint

    done = workdir / f"n{n}.json"
    if done.exists():
        return tuple(json.loads(done.read_text()))
    tpl = workdir / "template"
    if not (tpl / "pairs").exists():
        generate_corpus(str(tpl / "c"), 100, 100, seed=0, bad_files=False)
        ingest = run_ingest(str(tpl / "c" / "media"), str(tpl / "examples"))
        run_synth(ingest["uri"], str(tpl / "pairs"))
    ex_dir, ex_man = mf.resolve_input(str(tpl / "examples"))
    p_dir, p_man = mf.resolve_input(str(tpl / "pairs"))
    examples = mf.read_table(ex_dir, ex_man, "examples").to_pylist()
    pairs = mf.read_table(p_dir, p_man, "pairs").to_pylist()
    copies = -(-n // len(examples))

    def copy(e: dict, j: int) -> dict:
        parts = []
        for p in e["parts"]:
            p = dict(p)
            if p.get("pixels"):  # the copy's number written into its first pixels
                frames = part_frames(p).copy()
                frames[0, 0, :4, :] = np.frombuffer(j.to_bytes(12, "big"), np.uint8).reshape(4, 3)
                p["pixels"], p["pixel_format"] = encode_frames(frames, p.get("pixel_format")
                                                               or "raw")
            if p.get("text"):
                p["text"] = f"{p['text']} copy {j}"
                p["tokens"] = None
            parts.append(p)
        group = e.get("near_dup_group")
        return e | {"id": f"{e['id']}-{j}", "parts": parts,
                    "near_dup_group": f"{group}-{j}" if group else None}

    out_ex = workdir / f"examples-{n}"
    writer = mf.VersionWriter(str(out_ex), "ingest", f"bench-{n}")
    files, rows, by_new = [], [], {}
    for j in range(copies):
        for e in examples:
            if len(by_new) >= n:
                break
            c = copy(e, j)
            by_new[c["id"]] = example_split(c).value
            rows.append(c)
            if len(rows) == FILE_ROWS:
                files.append(writer.write_part("examples", f"part-{len(files):05d}",
                                               pa.Table.from_pylist(rows, schema=EXAMPLE)))
                rows = []
    if rows:
        files.append(writer.write_part("examples", f"part-{len(files):05d}",
                                       pa.Table.from_pylist(rows, schema=EXAMPLE)))
    storage.write_bytes(storage.join(writer.dir, SPEC_FILE),
                        storage.read_bytes(storage.join(ex_dir, SPEC_FILE)))
    writer.commit({"examples": files}, {"examples": len(by_new)}, ex_man.config, ex_man.lineage)
    new_pairs = []
    for j in range(copies):
        for p in pairs:
            pos = f"{p['positive_id']}-{j}"
            if pos not in by_new:
                continue
            ref = p.get("query_ref")
            if ref and f"{ref['example_id']}-{j}" not in by_new:
                continue
            new_pairs.append(p | {"pair_id": f"{p['pair_id']}-{j}", "positive_id": pos,
                                  "split": by_new[pos],
                                  "positive_text": (f"{p['positive_text']} copy {j}"
                                                    if p.get("positive_text") else None),
                                  "query_ref": ref | {"example_id": f"{ref['example_id']}-{j}"}
                                  if ref else None})
    pw = mf.VersionWriter(str(workdir / f"pairs-{n}"), "synth", f"bench-{n}")
    pfiles = [pw.write_part("pairs", f"part-{i // 4096:05d}",
                            pa.Table.from_pylist(new_pairs[i : i + 4096], schema=PAIR))
              for i in range(0, len(new_pairs), 4096)]
    pw.commit({"pairs": pfiles}, {"pairs": len(new_pairs)}, p_man.config,
              p_man.lineage | {"examples": writer.dir})
    ckpts = str(workdir / "ckpt")
    if not (workdir / "ckpt").exists():
        tiny_checkpoint(ckpts, "bench", examples_spec(writer.dir))
    out = (pw.dir, writer.dir, ckpts)
    done.write_text(json.dumps(out))
    return out


def measure(pairs: str, examples: str, ckpts: str, out_root: str) -> dict:
    import psutil
    from loom.pipelines.mine import run_mine
    from loom.pipelines.ray.session import ensure_ray
    from loom.transforms.mining import MiningConfig

    ensure_ray(num_cpus=2, object_store_mb=1024)
    proc = psutil.Process()
    base = proc.memory_full_info().uss
    with Peak(lambda: proc.memory_full_info().uss) as peak:
        start = time.perf_counter()
        out = run_mine(pairs, out_root, "latest", ckpts,
                       MiningConfig(negatives=2, cross_modal={"image": 1, "text": 1}),
                       corpus_uri=examples)
        wall = time.perf_counter() - start
    return {"driver_peak_mb": round((peak.value - base) / 2**20, 1),
            "driver_base_mb": round(base / 2**20, 1), "wall_s": round(wall, 1),
            "counts": {k: out["counts"][k] for k in ("corpus", "triples", "embedded",
                                                       "cache_hits", "negatives")},
            "timings": out.get("timings")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--json")
    ap.add_argument("--tag", default="run")
    args = ap.parse_args()
    work = pathlib.Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    pairs, examples, ckpts = build(work, args.n)
    res = measure(pairs, examples, ckpts, str(work / f"triples-{args.tag}-{time.time_ns()}"))
    print(json.dumps(res, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
