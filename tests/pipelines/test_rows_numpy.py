"""Examples read by the worker and driver paths keep audio features as float16 arrays
(issue 16): as Python floats a 30 s log-mel is ~6 MB, as float16 ~375 KB. Each path runs
on a small corpus with long audio clips; what it hands on is checked against the features
written, its outputs against values computed here, and its Python allocations (tracemalloc)
against a bound that a `to_pylist` read of the clips alone would pass several times over."""

from __future__ import annotations

import hashlib
import json
import pickle
import tracemalloc
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.models.handler import EncoderHandler
from loom.pipelines.exchange import to_ipc
from loom.pipelines.pairs import run_pairs
from loom.pipelines.ray.evaluate import heldout_rows_of
from loom.pipelines.ray.mine import _prepare, corpus_items, prepare_queries
from loom.pipelines.shard_join import JoinSteps, _Tag
from loom.pipelines.synth_relabel import _candidate_examples
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EXAMPLE, PAIR, TRIPLE, Split, empty_part, rows_of, to_table
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer

from tests.checkpoints import tiny_checkpoint

BINS = 64
FRAMES = 3000  # a 30 s clip at a 10 ms hop
CLIPS = 3
AS_FLOATS = CLIPS * FRAMES * BINS * 32  # what to_pylist makes of the clips: float + slot
BOUND = AS_FLOATS // 4  # Python bytes a path may allocate at its peak


def _feats(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(FRAMES * BINS).astype(np.float16)


def _ex(eid: str, modality: str, parts: list[dict]) -> dict:
    return {"id": eid, "modality": modality, "parts": parts, "source_uris": [f"mem://{eid}"],
            "mime": None, "size_bytes": 1, "metadata": json.dumps({})}


def _pair(pid: str, **kw) -> dict:
    return dict.fromkeys(PAIR.names) | {
        "pair_id": pid, "kind": "k", "query_text": "", "split": "train", "prompt_version": "v",
        "model": "m", "backend": "offline", "source": "synthetic"} | kw


def _digest(modality: str, feats: np.ndarray) -> str:
    """item_digest of an audio-only ITEM, written out: no tokens, pixels or instruction."""
    head = f"{modality}\x00None\x000\x00{BINS}\x000\x00".encode()
    return hashlib.sha256(head + b"\x00" + b"\x00" + feats.tobytes()).hexdigest()[:32]


def _is_f16(values, want: np.ndarray) -> None:
    assert isinstance(values, np.ndarray) and values.dtype == np.float16
    np.testing.assert_array_equal(values, want)


def _peak(fn):
    """fn() and the peak of Python allocations while it ran."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("rows_numpy")
    words = ["a dog barks", "rain on a roof", "a bell rings", "sound"]
    tok_json = train_tokenizer(words, 200)
    tok = TextTokenizer.from_json(tok_json)
    spec = PreprocessingSpec(tokenizer_json=tok_json, image_codec="raw")

    def text(t: str) -> dict:
        return empty_part("text") | {"text": t, "tokens": tok.encode(t, 64)}

    feats = {f"aud{i}": _feats(i) for i in range(CLIPS)}
    examples = [_ex(k, "audio", [empty_part("audio") | {
        "features": v, "feature_bins": BINS, "frames": FRAMES}]) for k, v in feats.items()]
    examples += [_ex(f"txt{i}", "text", [text(w)]) for i, w in enumerate(words[:3])]
    ex_w = mf.VersionWriter(str(base / "examples"), "ingest", "ingest-x")
    files = [ex_w.write_part("examples", "part-0", to_table(examples[:2], EXAMPLE)),
             ex_w.write_part("examples", "part-1", to_table(examples[2:], EXAMPLE))]
    storage.write_bytes(storage.join(ex_w.dir, SPEC_FILE), spec.model_dump_json().encode())
    manifest = ex_w.commit({"examples": files}, {"examples": len(examples)}, {}, {})
    pairs = [_pair(f"a2t{i}", query_ref={"example_id": f"aud{i}", "parts": None},
                   query_modality="audio", positive_id=f"txt{i}", positive_modality="text")
             for i in range(CLIPS)]
    pairs.append(_pair("t2a", query_text="sound", query_modality="text", positive_id="aud0",
                       positive_modality="audio"))
    pairs.append(_pair("inline", query_parts=examples[1]["parts"], query_modality="audio",
                       positive_id="txt1", positive_modality="text"))  # aud1's clip inline
    ckpts = str(base / "ckpts")
    handler = EncoderHandler(ckpts, tiny_checkpoint(ckpts, "run", spec))
    handler.inputs()  # the preprocessor is cached per process: read before any measure
    return {"base": base, "dir": ex_w.dir, "manifest": manifest, "feats": feats,
            "pairs": pairs, "handler": handler, "files": [storage.join(ex_w.dir, f.path)
                                                          for f in files]}


def test_heldout_examples_hand_on_float16(world):
    m = world["manifest"]
    rows, peak = _peak(lambda: [e for f in m.tables["examples"]
                                for e in heldout_rows_of(world["dir"], m, f, 0.999)[1]])
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {*world["feats"], "txt0", "txt1", "txt2"}
    for eid, want in world["feats"].items():
        part = by_id[eid]["parts"][0]
        _is_f16(part["features"], want)
        assert (part["kind"], part["feature_bins"], part["frames"]) == ("audio", BINS, FRAMES)
    assert by_id["txt1"]["parts"][0]["text"] == "rain on a roof"
    assert peak < BOUND, f"{peak} bytes of Python objects for {CLIPS} clips"


def test_mine_prepare_keeps_digests_and_float16(world, tmp_path, ray_session):
    """The corpus task (`_prepare`) and the query task (`prepare_queries`): the ITEMs
    they hand to the embedder carry the clips as float16, under the digests item_digest
    gave when the rows were Python floats (the cache keys stay valid)."""
    handler, feats = world["handler"], world["feats"]
    unit = {"kind": "examples", "uris": world["files"], "plan": str(tmp_path / "plan.parquet")}
    cached = [ray_session.put(np.zeros(0, dtype="S16"))]
    read = partial(corpus_items, handler=handler, heldout_fraction=0.0)
    items, peak = _peak(lambda: _prepare(pa.Table.from_pylist([unit]), read, cached))
    assert peak < BOUND, f"{peak} bytes of Python objects for {CLIPS} clips"
    got = dict(zip(items.column("id").to_pylist(), items.column("digest").to_pylist(),
                   strict=True))
    for eid, want in feats.items():
        assert got[eid] == _digest("audio", want)
    for blob in items.column("item_pickle").to_pylist():
        item = pickle.loads(blob)
        if item["id"] in feats:
            _is_f16(item["features"], feats[item["id"]])
    plan = pq.read_table(unit["plan"]).to_pylist()
    assert {r["id"]: r["digest"] for r in plan} == got

    p_w = mf.VersionWriter(str(tmp_path / "pairs"), "synth", "synth-x")
    files = [p_w.write_part("pairs", "part-0", to_table(world["pairs"], PAIR))]
    p_manifest = p_w.commit({"pairs": files}, {"pairs": len(world["pairs"])}, {}, {})
    out, peak = _peak(lambda: prepare_queries._function(
        p_w.dir, p_manifest, world["files"], 0.0, handler, str(tmp_path / "work")))
    assert peak < BOUND, f"{peak} bytes of Python objects for {CLIPS} clips"
    assert out["missing_query"] == 0 and out["positions"] == len(world["pairs"])
    queries = storage.read_parquet(out["item_parts"])
    digests = set(queries.column("digest").to_pylist())
    assert {_digest("audio", v) for v in feats.values()} <= digests  # `inline` is aud1's
    for blob in queries.column("item_pickle").to_pylist():
        item = pickle.loads(blob)
        if item["modality"] == "audio":
            want = next(v for v in feats.values() if _digest("audio", v) == item["id"][2:])
            _is_f16(item["features"], want)


def test_shard_join_builds_rows_from_float16(world, tmp_path):
    """A join partition's build: the Examples it was sent (Arrow IPC) as rows, then
    TrainingRows whose audio sides are the clips, byte for byte."""
    steps = JoinSteps(str(tmp_path), world["dir"], PAIR, Split.TRAIN, 1)
    examples = pa.concat_tables(storage.read_parquet([u]) for u in world["files"])
    pairs = str(tmp_path / "pairs.parquet")
    pq.write_table(to_table(world["pairs"], PAIR), pairs)
    item = {"name": "part-00000", "file": pairs, "offset": 0, "length": len(world["pairs"])}
    values = [_Tag.ITEM + json.dumps(item).encode(), _Tag.ROWS + to_ipc(examples)]
    list(steps.build("warm", values))  # the spec and tokenizer load once per worker
    (name, out), peak = _peak(lambda: next(iter(steps.build("part-00000", values))))
    assert peak < BOUND, f"{peak} bytes of Python objects for {CLIPS} clips"
    rec = json.loads(out)
    assert name == "part-00000" and rec["missing"] == 0
    rows = {r["pair_id"]: r for r in rows_of(pq.read_table(tmp_path / rec["file"]["path"]))}
    assert set(rows) == {p["pair_id"] for p in world["pairs"]}
    feats = world["feats"]
    for i in range(CLIPS):
        _is_f16(rows[f"a2t{i}"]["query"]["features"], feats[f"aud{i}"])
        assert rows[f"a2t{i}"]["positive"]["id"] == f"txt{i}"
    _is_f16(rows["t2a"]["positive"]["features"], feats["aud0"])
    _is_f16(rows["inline"]["query"]["features"], feats["aud1"])


def test_relabel_candidates_read_file_by_file(world, tmp_path):
    """Only the Examples the triples name reach the work files, one per Examples file that
    holds any (each file read on its own), with their features as written."""
    neg = {"score": 0.5, "modality": "audio", "rank": 0}
    triples = to_table([dict.fromkeys(TRIPLE.names) | {
        "pair_id": f"p{i}", "query_text": "q", "query_modality": "text", "positive_id": pos,
        "positive_modality": "text", "checkpoint": "c", "negatives": [neg | {"id": n}]}
        for i, (pos, n) in enumerate([("txt0", "aud2"), ("txt0", "aud0")])], TRIPLE)
    t_manifest = mf.Manifest(stage="mine", version="mine-x", tables={}, counts={}, config={},
                             lineage={"examples": world["dir"]})
    writer = mf.VersionWriter(str(tmp_path / "relabel"), "relabel", "relabel-x")
    uris = _candidate_examples(writer, triples, t_manifest)
    got = [rows_of(storage.read_parquet([u])) for u in uris]
    assert [[r["id"] for r in rows] for rows in got] == [["aud0"], ["aud2", "txt0"]]
    for rows in got:
        for r in rows:
            if r["id"] in world["feats"]:
                _is_f16(r["parts"][0]["features"], world["feats"][r["id"]])


def test_pairs_read_examples_and_mixed_pairs_as_float16(world, tmp_path):
    """`loom pairs`: natural pairs of a video with its audio track, beside mixed-in pairs
    whose inline query part is a clip; both read without the clips becoming floats."""
    video = empty_part("video") | {"pixels": bytes(2 * 8 * 8 * 3), "pixel_format": "raw",
                                   "height": 8, "width": 8, "frames": 2}
    track = empty_part("audio") | {"features": world["feats"]["aud0"], "feature_bins": BINS,
                                   "frames": FRAMES}
    ex_w = mf.VersionWriter(str(tmp_path / "examples"), "ingest", "ingest-v")
    files = [ex_w.write_part("examples", "part-0",
                             to_table([_ex("vid0", "video", [video, track])], EXAMPLE))]
    ex_w.commit({"examples": files}, {"examples": 1}, {}, {})
    p_w = mf.VersionWriter(str(tmp_path / "synth"), "synth", "synth-x")
    files = [p_w.write_part("pairs", "part-0", to_table(world["pairs"], PAIR))]
    p_w.commit({"pairs": files}, {"pairs": len(world["pairs"])}, {}, {})
    out, peak = _peak(lambda: run_pairs(ex_w.dir, str(tmp_path / "out"), ("av_track",),
                                        mix=(p_w.dir,)))
    assert peak < BOUND, f"{peak} bytes of Python objects for 2 clips"
    rows = {r["pair_id"]: r for r in rows_of(mf.read_table(*mf.resolve_input(out["uri"]),
                                                           "pairs"))}
    natural = {"n" + hashlib.sha256(f"vid0|av_track|{q}|{p}".encode()).hexdigest()[:23]: q
               for q, p in (([0], [1]), ([1], [0]))}
    assert set(rows) == set(natural) | {p["pair_id"] for p in world["pairs"]}
    for pid, q in natural.items():
        assert rows[pid]["query_ref"] == {"example_id": "vid0", "parts": q}
        assert rows[pid]["positive_parts"] == [1 - q[0]]
    _is_f16(rows["inline"]["query_parts"][0]["features"], world["feats"]["aud1"])
    assert out["counts"]["natural"] == 2 and out["counts"]["mixed"] == len(world["pairs"])
