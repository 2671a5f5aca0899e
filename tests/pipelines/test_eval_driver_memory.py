"""Eval's driver holds queries, per-item metadata and vectors, never the gallery: on a
corpus of long clips (26 MB of frames) the driver's traced peak stays under a third of the
gallery's bytes (the untrained baseline's two sampled clips, decoded, are most of it); it
passed the whole gallery when the driver read every held-out Example as a row."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from loom.pipelines.evaluate import run_eval
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EXAMPLE, PAIR, empty_part, to_table
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.tokenizer import train_tokenizer

from tests.checkpoints import tiny_checkpoint

N, FRAMES, SIDE = 80, 48, 48  # 80 clips of 48 frames of 48x48 RGB: 26.5 MB of pixels


def _clip(i: int) -> dict:
    pixels = np.full((FRAMES, SIDE, SIDE, 3), i, np.uint8).tobytes()
    part = empty_part("video") | {"pixels": pixels, "pixel_format": "raw", "height": SIDE,
                                  "width": SIDE, "frames": FRAMES}
    return {"id": f"vid{i:03d}", "modality": "video", "parts": [part],
            "source_uris": [f"mem://vid{i:03d}"], "mime": None, "size_bytes": len(pixels),
            "metadata": json.dumps({})}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_memory")
    words = [f"word{i} colour{i}" for i in range(N)]
    tok_json = train_tokenizer(words + ["retrieve the clip"], 300)
    spec = PreprocessingSpec(tokenizer_json=tok_json, image_codec="raw")
    examples = [_clip(i) for i in range(N)]
    ex_w = mf.VersionWriter(str(base / "examples"), "ingest", "ingest-m")
    files = [ex_w.write_part("examples", f"part-{i}", to_table(examples[i : i + 20], EXAMPLE))
             for i in range(0, N, 20)]
    storage.write_bytes(storage.join(ex_w.dir, SPEC_FILE), spec.model_dump_json().encode())
    ex_w.commit({"examples": files}, {"examples": N}, {}, {})
    pairs = [dict.fromkeys(PAIR.names) | {
        "pair_id": f"c{i:03d}", "task": "retrieve the clip", "kind": "compose",
        "query_text": words[i], "query_modality": "text", "positive_id": f"vid{i:03d}",
        "positive_modality": "video", "split": "heldout", "prompt_version": "compose.v1",
        "model": "m", "backend": "offline", "source": "synthetic"} for i in range(N)]
    p_w = mf.VersionWriter(str(base / "pairs"), "synth", "synth-m")
    p_w.commit({"pairs": [p_w.write_part("pairs", "part-0", to_table(pairs, PAIR))]},
               {"pairs": N}, {"heldout_fraction": 0.999}, {"examples": ex_w.dir})
    ckpts = str(base / "ckpts")
    return {"base": base, "pairs": p_w.dir, "ckpts": ckpts,
            "ckpt": tiny_checkpoint(ckpts, "run", spec),
            "gallery_bytes": sum(len(e["parts"][0]["pixels"]) for e in examples)}


def test_driver_never_holds_the_gallery(clips):
    base, cap = clips["base"], 2  # the untrained baseline reads 2 clips (in a worker)
    args = (clips["pairs"], clips["ckpt"], clips["ckpts"])
    warm = run_eval(*args, str(base / "warm"), baseline_cap=cap)  # imports, Ray started
    tracemalloc.start()
    try:  # the second run: what the driver allocates for eval, not for imports
        out = run_eval(*args, str(base / "eval"), baseline_cap=cap, seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    entry = out["eval"]["text->video"]
    assert entry["gallery"] == N and entry["queries"] == N
    assert entry["baseline_sample"]["cap"] == cap
    assert out["eval"]["text->video"]["by_dim"] == warm["eval"]["text->video"]["by_dim"]
    print(f"driver traced peak {peak / 2**20:.1f} MiB; gallery "
          f"{clips['gallery_bytes'] / 2**20:.1f} MiB")
    assert peak < clips["gallery_bytes"] / 3, (peak, clips["gallery_bytes"])
