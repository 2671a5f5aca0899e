"""Benchmark (issue 16): driver memory, worker memory, wall time and objects written per
stage, as the corpus grows.

    nice -n 10 .venv/bin/python -m tests.benchmarks.bench_scale --sizes 10000 100000 1000000 \\
        --workdir DIR --json OUT [--stages ingest synth mine shard eval backfill]

OUT is `{"stages": {STAGE: {"SIZE": {"driver_peak_mb", "driver_peak_at", "worker_peak_mb",
"worker_peak_uss_mb", "worker_peak_task", "wall_s", "objects_written", "objects_kept"}}}}`, rewritten after every (stage, size); a (stage,
size) already in OUT is skipped, so a killed run resumes where it stopped.

Inputs, generated once per size under DIR and reused:
- ingest lists and hashes SIZE tiny text files (a thousand per folder; distinct phrases,
  every 20th a near copy of one before it: 5% near-duplicates) with `run_ingest` on Ray; backfill embeds the same files (backfill always ingests its raw prefix first,
  so its numbers include that ingest).
- every other stage starts from generated data written straight as versions: an Examples
  version (half 48 px JPEG images, half short texts, the spec's tokenizer trained on the
  generator's words) and a Pairs version (one text query per Example, split by id).
  mine, eval and backfill embed with an untrained tiny encoder checkpoint (dim 32, one
  layer: the model costs little, the driver paths are what is measured); synth runs with
  the offline backend from a response cache written straight from the Examples first
  (every key the run asks for, two English queries an answer, in a few processes: the
  offline server answering 2.5M calls at 1M takes hours), so the measured run makes no
  LLM call.

Each (stage, size) runs in a fresh child process (the driver) with its own local Ray
session (2 CPUs, 256 MB object store), started before measuring. While the stage runs, a
thread samples every 0.25 s: the driver's USS (private memory: object-store pages the
driver maps do not count) and the RSS of every descendant process whose command line
names `ray::` (this session's workers and actors; the peak of the largest one is
reported), and their USS as well (`worker_peak_uss_mb`: RSS counts the object-store pages
a worker maps, shared with the raylet and every other reader; USS leaves out every page
another process maps too), with the process title Ray gave the worker at its USS peak
(`worker_peak_task`: `ray::search`, `ray::MapWorker(...)`, ...), and the loom functions the
driver's main thread was in at its USS peak (`driver_peak_at`, outermost first: `run_backfill >
run_ingest > ...`); with BENCH_SCALE_TIMELINE=PREFIX every sample goes to
PREFIX-STAGE-SIZE.tsv (seconds, driver USS MB, those functions). `objects_written` counts the files
the stage writes under its output root, whichever process writes them, from inotify
(Linux): `_work` files deleted before the stage ends count, an atomic write (temp file +
rename) counts once, a rewrite counts again; `objects_kept` counts the files still there
afterwards (after `_work` cleanup), minus those there before. The last line printed is
the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

STAGES = ("ingest", "synth", "mine", "shard", "eval", "backfill")
MiB = 2**20
PART_ROWS = 4096  # rows per generated Examples / Pairs part
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOOM_DIRS = tuple(os.path.join(_ROOT, d) + os.sep  # loom's own code, not site-packages'
                  for d in ("pipelines", "jobs", "models", "transforms", "synth", "schemas"))
TIMELINE_ENV = "BENCH_SCALE_TIMELINE"  # PREFIX: each child writes PREFIX-STAGE-SIZE.tsv
FILES_PER_DIR = 1000
NEAR_EVERY = 20  # every 20th media file is a near copy of one before it (5% near-dups)
WORDS = ("red green blue yellow circle square triangle small large bright dark top bottom "
         "left right river mountain city forest cat dog bird boat car").split()


# ---- generated inputs -------------------------------------------------------------------

def _stamp_ok(path: str, want: dict) -> bool:
    try:
        with open(os.path.join(path, "generated.json")) as f:
            return json.load(f) == want
    except (OSError, ValueError):
        return False


def _stamp(path: str, want: dict) -> None:
    with open(os.path.join(path, "generated.json"), "w") as f:
        json.dump(want, f)


def _words(i: int, n: int = 6) -> str:
    return " ".join(WORDS[(i * 7 + 3 * k + k * k) % len(WORDS)] for k in range(n)) + f" {i}"


def _phrase(i: int, n: int = 6) -> str:
    """n words spelled by the base-24 digits of a scramble of i (a bijection on 24^n: the
    multiplier is prime to it), so the files are distinct phrases, not a few dozen
    near-duplicate clusters (`_words` gives 24 phrases: ingest's near-dup join then
    grew with the square of the corpus, a corpus no real bucket looks like)."""
    x = (i * 2654435761 + 12345) % len(WORDS) ** n
    out = []
    for _ in range(n):
        x, d = divmod(x, len(WORDS))
        out.append(WORDS[d])
    return " ".join(out)


def make_media(workdir: str, size: int) -> str:
    """SIZE tiny, distinct text files (what ingest lists, hashes and decodes)."""
    path = os.path.join(workdir, f"media-{size}")
    want = {"files": size, "text": "phrase", "near_every": NEAR_EVERY}
    if _stamp_ok(path, want):
        return path
    shutil.rmtree(path, ignore_errors=True)
    for i in range(size):
        sub = os.path.join(path, f"{i // FILES_PER_DIR:04d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"doc-{i:07d}.txt"), "w") as f:
            j = i - i % NEAR_EVERY if i % NEAR_EVERY == NEAR_EVERY - 1 else i
            f.write(f"note {_phrase(j)} {j}{'!' if j != i else '.'}\n")
    _stamp(path, want)
    return path


def _image(i: int, base: np.ndarray) -> bytes:
    from PIL import Image

    arr = base.copy()
    arr[(i * 5) % 48, :, :] = (i * 37) % 256
    arr[:, (i // 48) % 48, 1] = (i * 11) % 256
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=80)
    return buf.getvalue()


def make_world(workdir: str, size: int) -> dict:
    """An Examples version, a Pairs version over it, and a tiny checkpoint, written as
    the pipelines write them (VersionWriter parts + manifest), PART_ROWS rows at a time."""
    from loom.schemas import manifest as mf
    from loom.schemas import storage
    from loom.schemas.records import EXAMPLE, PAIR, empty_part, to_table
    from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
    from loom.schemas.splits import split_for
    from loom.transforms.tokenizer import TextTokenizer, train_tokenizer

    from tests.checkpoints import tiny_checkpoint

    path = os.path.join(workdir, f"world-{size}")
    want = {"examples": size, "part_rows": PART_ROWS}
    paths = {"examples": os.path.join(path, "examples"), "pairs": os.path.join(path, "pairs"),
             "ckpts": os.path.join(path, "ckpts")}
    if _stamp_ok(path, want):
        with open(os.path.join(path, "world.json")) as f:
            return json.load(f)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    tok_json = train_tokenizer([_words(i) for i in range(200)] + ["a picture of", "note"], 300)
    tok = TextTokenizer.from_json(tok_json)
    spec = PreprocessingSpec(tokenizer_json=tok_json, image_size=48, image_codec="jpeg")
    base = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)

    ex_w = mf.VersionWriter(paths["examples"], "ingest", mf.version_id(
        "ingest", [], {"bench_scale": size}))
    storage.write_bytes(storage.join(ex_w.dir, SPEC_FILE), spec.model_dump_json().encode())
    p_w = mf.VersionWriter(paths["pairs"], "synth", mf.version_id(
        "synth", [ex_w.version], {"bench_scale": size}))
    ex_files, pair_files = [], []
    for start in range(0, size, PART_ROWS):
        examples, pairs = [], []
        for i in range(start, min(size, start + PART_ROWS)):
            eid = hashlib.sha256(f"bench-scale:{i}".encode()).hexdigest()
            if i % 2:
                text = f"note {_words(i)}."
                part = empty_part("text") | {"text": text, "tokens": tok.encode(text, 64),
                                             "mime": "text/plain"}
                modality, query = "text", f"find the note about {_words(i, 3)}"
            else:
                part = empty_part("image") | {"pixels": _image(i, base), "pixel_format": "jpeg",
                                              "height": 48, "width": 48, "frames": 1,
                                              "mime": "image/jpeg"}
                modality, query = "image", f"a picture of {_words(i, 4)}"
            part["source_uri"] = f"gen://{i}"
            examples.append({"id": eid, "modality": modality, "parts": [part],
                             "source_uris": [f"gen://{i}"], "mime": part["mime"],
                             "size_bytes": 100, "metadata": "{}", "near_dup_group": eid,
                             "near_dup_sig": None})
            pairs.append(dict.fromkeys(PAIR.names) | {
                "pair_id": hashlib.sha256(f"pair:{eid}".encode()).hexdigest()[:32],
                "task": "retrieve it", "kind": "query", "query_text": query,
                "query_modality": "text", "positive_id": eid, "positive_modality": modality,
                "split": split_for(eid).value, "prompt_version": "bench.v1", "model": "bench",
                "backend": "offline", "source": "synthetic", "group": eid})
        n = start // PART_ROWS
        ex_files.append(ex_w.write_part("examples", f"part-{n:05d}", to_table(examples, EXAMPLE)))
        pair_files.append(p_w.write_part("pairs", f"part-{n:05d}", to_table(pairs, PAIR)))
    ex_w.commit({"examples": ex_files}, {"examples": size}, {"bench_scale": size},
                {"spec_digest": spec.digest()})
    p_w.commit({"pairs": pair_files}, {"pairs": size}, {"heldout_fraction": 0.2},
               {"examples": ex_w.dir})
    world = {"examples": ex_w.dir, "pairs": p_w.dir, "ckpts": paths["ckpts"],
             "ckpt": tiny_checkpoint(paths["ckpts"], "bench", spec)}
    with open(os.path.join(path, "world.json"), "w") as f:
        json.dump(world, f)
    _stamp(path, want)
    return world


def _prefill_part(args: tuple[str, str, int]) -> int:
    """One Examples part's answers, written straight into the response cache (the key
    synth computes, the fields an answer of the offline backend has)."""
    import pyarrow.parquet as pq
    from loom.synth.cache import ResponseCache
    from loom.synth.client import LLMConfig
    from loom.synth.prompts import PromptSet
    from loom.synth.stage import DEFAULT_KINDS, response_key

    part, cache_uri, seed = args
    llm, cache = LLMConfig(), ResponseCache(cache_uri)
    prompts = PromptSet.load(sorted({k for ks in DEFAULT_KINDS.values() for k in ks}))
    t = pq.read_table(part, columns=["id", "modality"]).to_pydict()
    n = 0
    for j, (eid, modality) in enumerate(zip(t["id"], t["modality"], strict=True)):
        for kind in DEFAULT_KINDS[modality]:
            k = response_key(llm, prompts.version(kind, modality), eid)
            i = seed + j
            answer = {"model_version": "loom-offline-1", "repaired": False,
                      "queries": [f"the {kind} of a {_words(i, 3)} scene",
                                  f"where is the {_words(i + 1, 2)} in this one"],
                      "response_id": k[:20], "task": f"Retrieve the {modality} it describes.",
                      "usage": {"calls": 1, "input_tokens": 400, "output_tokens": 30}}
            path = cache.uri(k)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:  # a plain write: no fsync, nothing measured here
                json.dump(answer, f, sort_keys=True)
            n += 1
    return n


def prefill_synth_cache(workdir: str, size: int, out: str) -> int:
    """Every answer the synth run will ask for, written into `out`'s response cache in a
    few processes (the offline server at 1M takes hours; this takes minutes), so the
    measured run makes no LLM call. Kept between runs: a stamp says it is complete."""
    import multiprocessing

    from loom.schemas import manifest as mf

    cache_uri = os.path.join(out, "_llm_cache")
    want = {"prefilled": size}
    if _stamp_ok(cache_uri, want):
        return 0
    world = make_world(workdir, size)
    ex_dir, manifest = mf.resolve_input(world["examples"])
    parts = [os.path.join(ex_dir, f.path) for f in manifest.tables["examples"]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        n = sum(pool.imap_unordered(
            _prefill_part, [(p, cache_uri, i * PART_ROWS) for i, p in enumerate(parts)]))
    _stamp(cache_uri, want)
    return n


# ---- measurement ------------------------------------------------------------------------

def _count_files(root: str) -> int:
    n = 0
    for _, _, files in os.walk(root):
        n += len(files)
    return n


class WriteCounter:
    """Files written under a root, from Linux inotify: a create or a rename into place of
    a name that is not a temporary one (storage.is_tmp) counts once, so an atomic write
    (temp file, then rename) is one object, and a file written and deleted before the
    stage ends (a `_work` file) still counts. Folders are watched as they appear; a file
    made in a new folder before its watch is added is picked up by a scan of that folder
    (one written and deleted in that gap is missed). Events are read by a thread of its
    own, so new folders are watched as soon as the kernel reports them.
    """

    IN_CREATE, IN_MOVED_TO, IN_ISDIR, IN_Q_OVERFLOW = 0x100, 0x80, 0x40000000, 0x4000

    def __init__(self, root: str):
        import ctypes

        from loom.schemas.storage import is_tmp

        self._is_tmp = is_tmp
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.root, self.count, self.overflow = root, 0, False
        self._dirs: dict[int, str] = {}
        self._watched: set[str] = set()
        self._seen: set[str] = set()
        os.makedirs(root, exist_ok=True)
        self._watch(root, scan=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            if select.select([self.fd], [], [], 0.1)[0]:
                self.poll()

    def _watch(self, path: str, scan: bool = True) -> None:
        if path in self._watched:  # seen both by its parent's scan and by an event
            return
        self._watched.add(path)
        wd = self._libc.inotify_add_watch(self.fd, path.encode(),
                                          self.IN_CREATE | self.IN_MOVED_TO)
        if wd < 0:
            return  # gone already (a `_work` folder deleted in between)
        self._dirs[wd] = path
        for entry in os.scandir(path) if scan else ():
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._watch(entry.path)
                elif entry.path not in self._seen and not self._is_tmp(entry.name):
                    self._seen.add(entry.path)
                    self.count += 1
            except OSError:
                pass

    def poll(self) -> None:
        import struct

        while True:
            try:
                buf = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                return
            at = 0
            while at < len(buf):
                wd, mask, _, size = struct.unpack_from("iIII", buf, at)
                name = buf[at + 16:at + 16 + size].rstrip(b"\0").decode()
                at += 16 + size
                if mask & self.IN_Q_OVERFLOW:
                    self.overflow = True
                    continue
                if not name or not mask & (self.IN_CREATE | self.IN_MOVED_TO):
                    continue  # IN_IGNORED: a watched folder was deleted
                path = os.path.join(self._dirs.get(wd, ""), name)
                if mask & self.IN_ISDIR:
                    self._watch(path)
                elif path in self._seen:  # the scan of its new folder counted it
                    self._seen.discard(path)
                elif not self._is_tmp(name):
                    self.count += 1

    def close(self) -> int:
        """Stops watching; the count of files written."""
        self._stop.set()
        self._thread.join()
        self.poll()
        os.close(self.fd)
        return self.count


class Sampler:
    """Peak driver USS, peak RSS and peak USS of the largest `ray::` process (each its own
    peak), files written under a root."""

    def __init__(self, root: str, interval_s: float = 0.25, timeline: str | None = None):
        self.root, self.interval_s = root, interval_s
        self.me = psutil.Process()
        self.driver_peak = self.worker_peak = self.worker_peak_uss = 0
        self.worker_peak_task = self.driver_peak_at = ""
        self._main = threading.main_thread().ident
        self._t0 = time.monotonic()
        self._timeline = open(timeline, "w") if timeline else None  # noqa: SIM115
        self.files_before = _count_files(root) if os.path.isdir(root) else 0
        self.writes = WriteCounter(root)
        self._workers: dict[int, psutil.Process] = {}
        self._next_scan = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan_workers(self) -> None:
        """This driver's Ray processes only (its raylet's workers are its descendants): other
        Ray sessions on the machine are not this run's."""
        for p in self.me.children(recursive=True):
            try:
                if p.pid not in self._workers and "ray::" in " ".join(p.cmdline()):
                    self._workers[p.pid] = p
            except psutil.Error:
                pass

    def _where(self) -> str:
        """The loom functions the driver's main thread is in (outermost first)."""
        frame, names = sys._current_frames().get(self._main), []
        while frame is not None:
            if frame.f_code.co_filename.startswith(LOOM_DIRS):
                names.append(frame.f_code.co_name)
            frame = frame.f_back
        names.reverse()
        if len(names) > 8:  # the entry point and the innermost calls say where
            names = [*names[:3], "...", *names[-5:]]
        return " > ".join(names)

    def sample(self) -> None:
        now = time.monotonic()
        uss = self.me.memory_full_info().uss
        peak = uss > self.driver_peak
        where = self._where() if peak or self._timeline else ""  # one walk of the stack
        if peak:
            self.driver_peak, self.driver_peak_at = uss, where
        if self._timeline:
            self._timeline.write(f"{now - self._t0:.2f}\t{uss / MiB:.1f}\t{where}\n")
        if now >= self._next_scan:
            self._scan_workers()
            self._next_scan = now + 1.0
        for pid, p in list(self._workers.items()):
            try:
                full = p.memory_full_info()  # rss and uss from one read of smaps
                self.worker_peak = max(self.worker_peak, full.rss)
                if full.uss > self.worker_peak_uss:  # what it ran then: Ray sets the title
                    self.worker_peak_uss = full.uss
                    self.worker_peak_task = " ".join(p.cmdline()).strip()[:120]
            except psutil.Error:
                self._workers.pop(pid, None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self._scan_workers()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        self.objects_written = self.writes.close()
        if self._timeline:
            self._timeline.close()


def _fresh(root: str, keep: tuple[str, ...] = ()) -> None:
    """An empty output root, but for the entries named in `keep`."""
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name not in keep:
            p = os.path.join(root, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)


def _stage_call(stage: str, size: int, workdir: str, out: str):
    """The stage's entry point as a no-argument call (inputs already generated)."""
    from loom.pipelines.runner import Engine

    world = None if stage == "ingest" else make_world(workdir, size)
    if stage == "ingest":
        from loom.pipelines.ingest import run_ingest

        media = make_media(workdir, size)
        return lambda: run_ingest(media, out, engine=Engine.RAY)
    if stage == "synth":
        from loom.pipelines.synth import run_synth

        return lambda: run_synth(world["examples"], out, engine=Engine.RAY)
    if stage == "mine":
        from loom.pipelines.mine import run_mine

        return lambda: run_mine(world["pairs"], out, world["ckpt"], world["ckpts"])
    if stage == "shard":
        from loom.pipelines.shard import run_shard

        return lambda: run_shard(world["pairs"], out, engine=Engine.RAY)
    if stage == "eval":
        from loom.pipelines.evaluate import run_eval

        return lambda: run_eval(world["pairs"], world["ckpt"], world["ckpts"], out)
    if stage == "backfill":
        from loom.pipelines.backfill import run_backfill

        media = make_media(workdir, size)
        return lambda: run_backfill(media, out, world["ckpt"], world["ckpts"],
                                    engine=Engine.RAY)
    raise ValueError(f"unknown stage {stage!r}")


def child(stage: str, size: int, workdir: str) -> dict:
    """One (stage, size) in this process: the driver being measured."""
    from loom.pipelines.ray.session import ensure_ray

    out = os.path.join(workdir, "out", f"{stage}-{size}")
    _fresh(out, keep=("_llm_cache",) if stage == "synth" else ())  # prefilled
    call = _stage_call(stage, size, workdir, out)
    ensure_ray(num_cpus=2, object_store_mb=256)
    timeline = os.environ.get(TIMELINE_ENV)
    with Sampler(out, timeline=f"{timeline}-{stage}-{size}.tsv" if timeline else None) as s:
        t = time.perf_counter()
        result = call()
        wall = time.perf_counter() - t
    if stage == "synth" and result.get("llm_calls"):
        raise RuntimeError(f"synth made {result['llm_calls']} LLM calls: the cache missed")
    got = {"driver_peak_mb": round(s.driver_peak / MiB, 1), "driver_peak_at": s.driver_peak_at,
           "worker_peak_mb": round(s.worker_peak / MiB, 1),
           "worker_peak_uss_mb": round(s.worker_peak_uss / MiB, 1),
           "worker_peak_task": s.worker_peak_task, "wall_s": round(wall, 2),
           "objects_written": s.objects_written, "objects_kept": _count_files(out) - s.files_before}
    if s.writes.overflow:  # the kernel dropped events: the count is a lower bound
        got["objects_lower_bound"] = True
    return got


def _run_child(stage: str, size: int, workdir: str, timeout_s: float) -> dict:
    """The child runs in its own process group, so a timeout ends it and its Ray session."""
    cmd = [sys.executable, "-m", "tests.benchmarks.bench_scale", "--child", stage, str(size),
           "--workdir", workdir]
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RuntimeError(f"{stage} at {size} ran past {timeout_s} s") from None
    if proc.returncode:
        raise RuntimeError(f"{stage} at {size} failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run(sizes: list[int], stages: list[str], workdir: str, out_json: str,
        timeout_s: float = 900, isolate: bool = True) -> dict:
    """A (stage, size) that fails or runs past `timeout_s` is reported on stderr and left
    out of OUT (a rerun tries it again); the others still run. `isolate=False` measures in
    this process, on its Ray session (a test's shared one), with no timeout."""
    def measure(stage: str, size: int) -> dict:
        if isolate:
            return _run_child(stage, size, workdir, timeout_s)
        return child(stage, size, workdir)

    os.makedirs(workdir, exist_ok=True)
    try:
        with open(out_json) as f:
            results = json.load(f)
    except FileNotFoundError:
        results = {"stages": {}}
    for size in sizes:
        for stage in stages:
            done = results["stages"].setdefault(stage, {})
            if str(size) in done:
                continue
            if stage in ("ingest", "backfill"):  # generated here, not in the measured driver
                make_media(workdir, size)
            if stage != "ingest":
                make_world(workdir, size)
            try:
                if stage == "synth":
                    prefill_synth_cache(workdir, size, os.path.join(workdir, "out",
                                                                    f"synth-{size}"))
                done[str(size)] = measure(stage, size)
            except RuntimeError as e:
                print(f"{stage} {size}: not measured: {e}", file=sys.stderr, flush=True)
                continue
            print(f"{stage} {size}: {json.dumps(done[str(size)])}", flush=True)
            tmp = out_json + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)
            os.replace(tmp, out_json)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--workdir", default="/tmp/loom-bench-scale")
    ap.add_argument("--json", dest="out_json")
    ap.add_argument("--timeout-s", type=float, default=900, help="per (stage, size) child")
    ap.add_argument("--child", nargs=2, metavar=("STAGE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = os.path.abspath(args.workdir)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), workdir)))
        return
    if not args.out_json:
        ap.error("--json is required")
    print(json.dumps(run(args.sizes, args.stages, workdir, os.path.abspath(args.out_json),
                         args.timeout_s)))


if __name__ == "__main__":
    main()
