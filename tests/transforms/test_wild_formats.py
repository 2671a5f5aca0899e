"""Issue 18, media: containers real media comes in, audio of any sample format, metadata
that is not UTF-8, and video geometry (rotation, sample aspect ratio). Every file is
generated here (tests/transforms/wild.py)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest
import zstandard
from loom.schemas.records import Modality
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.audio import decode_audio
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.pixels import part_frames
from loom.transforms.sniff import sniff
from loom.transforms.video import decode_av, decode_video

from tests.transforms import wild

SPEC = PreprocessingSpec(image_size=32)
A, V = Modality.AUDIO, Modality.VIDEO


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    latin1 = "Caf\xe9 \xe0 la cr\xe8me".encode("latin-1")
    return {
        "clip.ts": wild.mpegts(), "clip.m2ts": wild.mpegts(m2ts=True), "clip.flv": wild.flv(),
        "clip.dv": wild.dv(), "float.aiff": wild.aiff_float(), "pcm64.wav": wild.wav_pcm64(),
        "audio.mp4": wild.audio_only("mp4"), "audio.mkv": wild.audio_only("matroska"),
        "audio.avi": wild.audio_only("avi"), "audio.webm": wild.audio_only("webm"),
        "title.mkv": wild.with_raw_metadata("matroska", latin1),
        "title.mp4": wild.with_raw_metadata("mp4", latin1),
    }


@pytest.mark.parametrize("name,modality,mime", [
    ("clip.ts", V, "video/mp2t"), ("clip.m2ts", V, "video/mp2t"), ("clip.flv", V, "video/x-flv"),
    ("clip.dv", V, "video/dv"), ("float.aiff", A, "audio/aiff"), ("pcm64.wav", A, "audio/wav"),
])
def test_sniffed_by_content_whatever_the_name(files, name, modality, mime):
    for uri in (name, "x.txt", "x"):  # `.ts` is TypeScript to mimetypes: content wins
        assert sniff(files[name], uri) == (modality, mime)


def test_aiff_float_whose_bytes_look_like_utf16_is_audio():
    data = wild.aiff_float()
    body = bytearray(data)
    body[64::2] = bytes(len(body[64::2]))  # NULs on one parity: what UTF-16 looks like
    assert sniff(bytes(body), "x.txt") == (A, "audio/aiff")


@pytest.mark.parametrize("pack,mime", [
    (gzip.compress, "application/gzip"), (lzma.compress, "application/x-xz"),
    (bz2.compress, "application/x-bzip2"),
    (lambda b: zstandard.ZstdCompressor().compress(b), "application/zstd"),
])
def test_compressed_streams_are_never_text(pack, mime):
    assert sniff(pack(b"plain words " * 40), "notes.txt") == (None, mime)


def test_ts_named_file_that_is_not_ts_is_not_text():
    junk = random.Random(0).randbytes(4096)  # no magic, no sync pattern, not text
    assert sniff(junk, "app.ts") == (None, None)  # mimetypes: text/vnd.trolltech.linguist


@pytest.mark.parametrize("name", ["clip.ts", "clip.m2ts", "clip.flv", "clip.dv"])
def test_self_contained_containers_decode_to_video_and_audio(files, name):
    parts, meta = decode_video(files[name], SPEC)
    assert [p["kind"] for p in parts] == ["video", "audio"]
    assert meta["frames_sampled"] >= 1 and meta["has_audio"]
    frame = part_frames(parts[0])[0].astype(float).mean(axis=2)
    assert frame[:, :16].mean() > frame[:, 16:].mean() + 100  # the bright left half


@pytest.mark.parametrize("name", ["audio.mp4", "audio.mkv", "audio.avi", "audio.webm"])
def test_video_container_with_sound_alone_is_an_audio_example(files, name):
    modality, parts, meta = decode_av(files[name], SPEC, mime=sniff(files[name])[1])
    assert modality == A and [p["kind"] for p in parts] == ["audio"]
    assert abs(meta["duration_s"] - 1.0) < 0.1 and parts[0]["frames"] > 50


@pytest.mark.parametrize("name", ["pcm64.wav", "float.aiff"])
def test_any_sample_format_decodes(files, name):
    part, meta = decode_audio(files[name], SPEC)
    feats = np.asarray(part["features"], np.float32).reshape(-1, part["feature_bins"])
    assert abs(meta["duration_s"] - 0.5) < 0.05
    # a 440 Hz tone: one mel band far above the rest, not silence or noise
    spectrum = feats.mean(axis=0)
    assert spectrum.max() - np.median(spectrum) > 5


@pytest.mark.parametrize("name", ["title.mkv", "title.mp4"])
def test_metadata_that_is_not_utf8_does_not_stop_the_file(files, name):
    assert b"Caf\xe9" in files[name]  # really Latin-1 bytes in the container
    parts, _ = decode_video(files[name], SPEC)
    assert parts[0]["frames"] >= 1


def test_every_file_one_outcome_through_the_stage(files, tmp_path):
    rows = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        rows.append({"uri": str(tmp_path / name), "id": hashlib.sha256(data).hexdigest()})
    stage = IngestStage(IngestConfig(spec=SPEC, isolate=False))
    out = stage.process_batch(pa.RecordBatch.from_pylist(rows, schema=IngestStage.input_schema))
    assert out["rejected"].num_rows == 0, out["rejected"].to_pylist()
    got = {e["source_uris"][0].rsplit("/", 1)[1]: e["modality"]
           for e in out["examples"].to_pylist()}
    assert got == {"clip.ts": "video", "clip.m2ts": "video", "clip.flv": "video",
                   "clip.dv": "video", "float.aiff": "audio", "pcm64.wav": "audio",
                   "audio.mp4": "audio", "audio.mkv": "audio", "audio.avi": "audio",
                   "audio.webm": "audio", "title.mkv": "video", "title.mp4": "video"}


def _bright_side(frame: np.ndarray) -> str:
    g = frame.astype(float).mean(axis=2)
    h, w = g.shape
    sides = {"left": g[:, : w // 2].mean() - g[:, w // 2 :].mean(),
             "top": g[: h // 2].mean() - g[h // 2 :].mean()}
    sides |= {"right": -sides["left"], "bottom": -sides["top"]}
    return max(sides, key=sides.get)


@pytest.mark.parametrize("rotation,side", [(None, "left"), (90, "bottom"), (180, "right"),
                                           (-90, "top")])
@pytest.mark.parametrize("fmt", ["mp4", "matroska"])
def test_display_rotation_is_applied(fmt, rotation, side):
    """A display matrix of +90 degrees means: turn the stored picture a quarter counter-
    clockwise to show it; the stored left half then lies at the bottom."""
    data = wild.encode(fmt, acodec=None, rotation=rotation)
    parts, _ = decode_video(data, SPEC)
    assert _bright_side(part_frames(parts[0])[0]) == side


@pytest.mark.parametrize("sar,share", [(None, 1 / 3), (Fraction(2, 1), 2 / 3),
                                       (Fraction(1, 2), 1 / 4)])
def test_sample_aspect_ratio_is_applied(sar, share):
    """64x48 stored, a bright stripe over the middle quarter of the width. Shown square
    pixels it is 1/3 of the centre crop; at SAR 2 (128x48 shown) 2/3; at SAR 1/2
    (64x96 shown, the crop is the full width) 1/4."""
    data = wild.encode("mp4", acodec=None, sar=sar, stripe=True)
    parts, _ = decode_video(data, SPEC)
    bright = float((part_frames(parts[0])[0].astype(float).mean(axis=2) > 115).mean())
    assert abs(bright - share) < 0.07, (sar, bright)
