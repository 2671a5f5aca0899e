"""The rich scenes as audio, video and PDF pages: each medium carries the whole scene in
its content, and the readers recover it from the bytes alone."""

from __future__ import annotations

import io
import random

import numpy as np
import soundfile as sf
from loom.schemas.spec import PreprocessingSpec
from loom.synth.offline_model import analyze_image, read_audio_scene, read_video_scene
from loom.transforms import scenes
from loom.transforms import scenes_media as sm
from loom.transforms.pdf import decode_pdf
from loom.transforms.video import decode_video
from PIL import Image


def _objs(scene: scenes.RichScene) -> list[tuple]:
    return [(o.size, o.color, o.shape, o.row, o.col) for o in scene.objects]


def _read(attrs: dict) -> list[tuple]:
    objs = attrs["objects"] if "objects" in attrs else [attrs]
    return [(o["size"], o["color"], o["shape"], o["row"], o["col"]) for o in objs]


def test_audio_code_round_trips_through_wav_with_noise():
    rng = random.Random(11)
    sample = [scenes.random_rich_scene(rng) for _ in range(40)]
    exact = 0
    for scene in sample:
        wav = sm.render_audio(scene, rng)
        samples, sr = sf.read(io.BytesIO(wav), dtype="float32")
        assert len(samples) / sr <= 8.0  # a short clip
        assert np.abs(samples[: int(0.1 * sr)]).std() > 0.005  # noise, not silence
        exact += _read(read_audio_scene(wav)) == _objs(scene)
    assert exact >= 38, exact


def test_audio_of_different_scenes_differs_and_noise_alone_is_unreadable():
    rng = random.Random(2)
    a = scenes.RichScene((scenes.Scene("circle", "red", "small", "top", "left"),))
    b = scenes.RichScene((scenes.Scene("bar", "blue", "large", "bottom", "right"),))
    assert _read(read_audio_scene(sm.render_audio(a, rng))) == _objs(a)
    assert _read(read_audio_scene(sm.render_audio(b, rng))) == _objs(b)
    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32), 16000,
             format="WAV")
    try:
        read_audio_scene(buf.getvalue())
    except ValueError as e:  # BadInput: nothing recognisable, never a made-up answer
        assert "no sound events" in str(e)
    else:
        raise AssertionError("noise was read as a scene")


def test_video_shows_motion_then_the_scene_and_carries_its_audio_track():
    rng = random.Random(5)
    two = next(s for s in iter(lambda: scenes.random_rich_scene(rng), None)
               if len(s.objects) == 2)
    data = sm.render_video(two, rng, audio=True)
    frames, audio, sr = sm.read_video(data)
    assert 5 <= len(frames) <= 8  # <= 8 s at 1 fps
    assert _read(analyze_image(_png(frames[-1]))) == _objs(two)  # the last frame is the scene
    first = analyze_image(_png(frames[0]))
    assert len(first.get("objects", [first])) == 1  # the second object appears later
    read = read_video_scene([], [("video/mp4", data)])
    events = {o["color"]: o.get("event") for o in read["objects"]}
    assert events[two.objects[1].color] == "appearing"
    assert _read({"objects": sm.decode_scene_audio(audio, sr)}) == _objs(two)  # AAC track
    # ingest samples the same clip at 1 fps and keeps the audio track as a second part
    parts, meta = decode_video(data, PreprocessingSpec())
    assert [p["kind"] for p in parts] == ["video", "audio"] and meta["has_audio"]
    assert parts[0]["frames"] == len(frames)


def _png(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def test_pdf_pages_draw_and_describe_their_scenes():
    rng = random.Random(9)
    pages = [scenes.random_rich_scene(rng) for _ in range(2)]
    texts = [scenes.describe_rich(s, rng) for s in pages]
    decoded, n = decode_pdf(sm.render_pdf(list(zip(pages, texts, strict=True))),
                            PreprocessingSpec(image_codec="raw", image_size=96), "doc")
    assert n == 2
    for rec, text in zip(decoded, texts, strict=True):
        render, layer = rec["parts"]
        assert " ".join(layer["text"].split()) == " ".join(text.split())  # a real text layer
        px = np.frombuffer(render["pixels"], np.uint8).reshape(96, 96, 3)
        colourful = (px.max(axis=2).astype(int) - px.min(axis=2)) > 60
        assert colourful.sum() > 30  # the shapes are drawn, in colour
