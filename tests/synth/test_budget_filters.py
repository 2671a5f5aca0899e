"""Price table, worst-case estimates that bound real usage, the reserving ledger, filters."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from google.genai import types
from loom.synth import filters as qf
from loom.synth.budget import Budget, Estimate, Ledger, call_estimate, load_prices, price_for
from loom.synth.client import LLMConfig, generate_pair_json
from loom.synth.prompts import PromptSet
from loom.synth.stage import content_parts
from loom.transforms import scenes

from tests.synth.conftest import image_example, text_example
from tests.transforms.media import make_wav
from tests.transforms.test_pdf import make_pdf

PROMPTS = PromptSet.load(["caption", "keyword", "question"])


def test_price_table():
    prices = load_prices()
    assert prices["gemini-2.5-flash"].input > 0 and prices["gemini-2.5-pro"].output > 0
    assert price_for("gemini-2.5-flash-001") == prices["gemini-2.5-flash"]  # a versioned id
    assert price_for("no-such-model") is None
    assert prices["gemini-2.5-flash"].cost(1_000_000, 0) == prices["gemini-2.5-flash"].input
    with pytest.raises(ValueError, match="price"):
        Ledger(Budget(max_cost=1.0), None)


def test_ledger_never_passes_the_budget():
    ledger = Ledger(Budget(max_tokens=1000, max_calls=5), price_for("gemini-2.5-flash"))
    est = Estimate(1, 200, 100)
    assert ledger.reserve(est) and ledger.reserve(est) and ledger.reserve(est)
    assert not ledger.reserve(est)  # 4 x 300 > 1000
    ledger.settle(est, Estimate(1, 50, 10))  # the call used less: room comes back
    assert ledger.reserve(est)
    assert ledger.spent.tokens + ledger.reserved.tokens <= 1000


def test_estimate_bounds_offline_usage(tmp_path, offline_client):
    rng = random.Random(4)
    cfg = LLMConfig()
    rows = []
    for _ in range(3):
        scene = scenes.random_scene(rng)
        rows += [image_example(tmp_path, scene, rng), text_example(scenes.describe(scene, rng))]
    for ex in rows:
        for kind in ("caption", "keyword"):
            out = generate_pair_json(offline_client, cfg, PROMPTS.text(kind), content_parts(ex))
            est = call_estimate(ex, PROMPTS.text(kind), cfg.max_output_tokens, with_repair=False)
            assert out["usage"]["calls"] == 1
            assert out["usage"]["input_tokens"] <= est.input_tokens
            assert out["usage"]["output_tokens"] <= est.output_tokens


def test_row_filters_and_duplicates():
    cfg = qf.FilterConfig(min_chars=3, max_words=6)
    # no document text (an image): the prompts ask for English
    kept, removed = qf.row_filters(
        ["red circle", "ok", "one two three four five six seven", "красный круг",
         "赤い丸を探す", "small blue square"], cfg)
    assert kept == {"red circle", "small blue square"}
    assert removed == {"length": 2, "language": 2}
    scripts = {"language": None}  # the optional script check alone
    assert qf.row_filters(["красный круг"], qf.FilterConfig(script="cyrillic", **scripts))[0] \
        == {"красный круг"}
    assert qf.row_filters(["赤い丸を探す"], qf.FilterConfig(script="cjk", **scripts))[0] \
        == {"赤い丸を探す"}
    assert qf.row_filters(["red"], qf.FilterConfig(script="cjk", **scripts))[0] == set()
    assert qf.row_filters(["赤い丸"], qf.FilterConfig(language=None))[0] == {"赤い丸"}
    rows = [{"pair_id": "b", "query_text": "Red  circle!", "positive_modality": "image"},
            {"pair_id": "a", "query_text": "red circle", "positive_modality": "image"},
            {"pair_id": "d", "query_text": "red circle", "positive_modality": "text"},
            {"pair_id": "c", "query_text": "blue", "positive_modality": "image"}]
    assert qf.duplicate_ids(rows) == {"b"}  # the smallest pair_id keeps it, per modality
    written = [{"pair_id": "e", "query_text": "", "positive_text": "a red circle",
                "query_modality": "image", "positive_modality": "text"},
               {"pair_id": "f", "query_text": "", "positive_text": "A red circle.",
                "query_modality": "image", "positive_modality": "text"},
               {"pair_id": "g", "query_text": "", "positive_text": "a blue ring",
                "query_modality": "audio", "positive_modality": "text"}]
    assert qf.duplicate_ids(written) == {"f"}  # written positives are what is compared


RUSSIAN = ("Небольшой красный круг находится в левом верхнем углу кадра. Фон светло-серый, "
           "больше ничего на картинке нет.")
CHINESE = "画面左上角有一个小的红色圆形。背景是浅灰色的，画面中没有其他东西。"
GERMAN = "Ein kleiner roter Kreis liegt oben links im Bild. Der Hintergrund ist hellgrau."


@pytest.mark.parametrize("doc, good, junk", [
    (RUSSIAN, "красный круг в левом верхнем углу", "quick question: is there a ?"),
    (CHINESE, "左上角的红色圆形", "small red circle top left"),
    (GERMAN, "roter Kreis oben links im Bild", "small red circle top left"),
    ("A small red circle sits in the top left of the frame, on a light gray background.",
     "small red circle top left", "красный круг слева"),
])
def test_language_filter_follows_the_document(doc, good, junk):
    """Queries in the document's own language pass; junk in another language does not
    (py3langid, its model inside the wheel), whatever the script."""
    kept, removed = qf.row_filters([good, junk], qf.FilterConfig(), doc)
    assert kept == {good} and removed == {"language": 1}
    fixed = qf.FilterConfig(language="en")  # a fixed language ignores the document
    assert "small red circle top left" in qf.row_filters(["small red circle top left"], fixed,
                                                          doc)[0]


def test_media_parts_sent_natively(tmp_path):
    import numpy as np

    wav, pdf = tmp_path / "a.wav", tmp_path / "p.pdf"
    wav.write_bytes(make_wav(0.5, sr=8000, channels=1))  # real files, as ingest would see
    pdf.write_bytes(make_pdf(["Revenue chart, Q3"]))
    audio = {"id": "a" * 64, "modality": "audio", "parts": [], "source_uris": [str(wav)],
             "mime": "audio/wav", "size_bytes": 32, "metadata": "{}"}
    frames = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    page = {"id": "p" * 64, "modality": "page", "source_uris": [str(pdf)],
            "mime": "application/pdf", "size_bytes": 18, "metadata": "{}",
            "parts": [{"kind": "page", "pixels": frames[:1].tobytes(), "height": 8, "width": 8,
                       "frames": 1}, {"kind": "text", "text": "Revenue chart, Q3"}]}
    bare_page = page | {"parts": [{"kind": "text", "text": "Revenue chart, Q3"}]}
    video = {"id": "v" * 64, "modality": "video", "source_uris": [str(tmp_path / "gone.mp4")],
             "mime": "video/mp4", "size_bytes": 10, "metadata": "{}",
             "parts": [{"kind": "video", "pixels": frames.tobytes(), "height": 8, "width": 8,
                        "frames": 3}]}
    a = content_parts(audio)
    assert [(p.inline_data.mime_type, p.inline_data.data) for p in a] == [("audio/wav", wav.read_bytes())]
    p = content_parts(page)  # the page itself: its image and text layer, not the whole PDF
    assert [x.inline_data.mime_type if x.inline_data else "text" for x in p] == ["image/png", "text"]
    assert content_parts(bare_page)[0].inline_data.mime_type == "application/pdf"
    v = content_parts(video)  # source unreadable: the decoded frames go as images
    assert [x.inline_data.mime_type for x in v] == ["image/png"] * 3
    assert all(isinstance(x, types.Part) for x in a + p + v)


def test_offline_server_reads_native_media(offline_client, tmp_path):
    """An audio Example goes through loom's own part builder as the file's bytes, and the
    offline model reads the scene from the waveform it received: a canned or empty payload
    fails. Bytes that are no audio (a pure tone encodes no scene) get an error, never a
    query made from a hash."""
    from loom.synth.client import LLMError
    from loom.transforms.scenes_media import render_audio

    scene = scenes.RichScene((scenes.Scene("ring", "teal", "large", "bottom", "left"),))
    data = render_audio(scene, random.Random(0))
    wav = tmp_path / "scene.wav"
    wav.write_bytes(data)
    audio = {"id": "a" * 64, "modality": "audio", "parts": [], "source_uris": [str(wav)],
             "mime": "audio/wav", "size_bytes": len(data), "metadata": "{}"}
    out = generate_pair_json(offline_client, LLMConfig(), PROMPTS.text("keyword", "audio"),
                             content_parts(audio))
    assert out["queries"][0] == "large teal ring bottom left"
    assert out["task"] == "Given keywords, retrieve the matching audio clip."
    (tmp_path / "tone.wav").write_bytes(make_wav(0.5, sr=8000, channels=1, freq=660.0))
    tone = audio | {"source_uris": [str(tmp_path / "tone.wav")]}
    with pytest.raises(LLMError):
        generate_pair_json(offline_client, LLMConfig(retry_attempts=1),
                           PROMPTS.text("keyword", "audio"), content_parts(tone))


def test_run_wide_duplicate_filter_over_parts(tmp_path):
    """The written pairs' duplicate filter, part by part: the smallest pair_id of a key
    stays wherever it was written, a part that loses rows is rewritten under its name and
    a part that loses all of them is gone; the result agrees with `qf.duplicate_ids`."""
    from loom.pipelines.synth import _run_filters
    from loom.schemas import storage
    from loom.schemas.manifest import write_part
    from loom.schemas.records import PAIR

    def pair(pid, text, pm="image"):
        return {"pair_id": pid, "kind": "k", "query_text": text, "query_modality": "text",
                "positive_id": f"x{pid}", "positive_modality": pm,
                "split": "heldout" if pid in "mbq" else "train",
                "prompt_version": "v", "model": "m", "backend": "offline"}

    parts = [[pair("m", "Red circle"), pair("c", "a blue ring"), pair("q", "green")],
             [pair("b", "red  circle!"), pair("z", "A blue ring."), pair("k", "green", "text")],
             [pair("y", "GREEN")]]
    vdir = str(tmp_path / "v")
    files = [write_part(vdir, "pairs", f"part-{n:05d}", pa.Table.from_pylist(rows, schema=PAIR))
             for n, rows in enumerate(parts)]
    out, counts, heldout = _run_filters(vdir, files, qf.FilterConfig(), None, "", "", None)
    assert heldout == 1  # "m" is dropped; "b" and "q", held out too, stay
    kept = [r["pair_id"] for f in out for r in storage.read_parquet(
        [storage.join(vdir, f.path)]).to_pylist()]
    assert sorted(kept) == ["b", "c", "k", "q"]
    assert set("mzy") == qf.duplicate_ids([r for rows in parts for r in rows])
    assert counts["filtered_duplicate"] == 3
    assert [f.path for f in out] == ["pairs/part-00000.parquet", "pairs/part-00001.parquet"]
    assert not storage.exists(storage.join(vdir, "pairs/part-00002.parquet"))
