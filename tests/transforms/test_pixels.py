"""Compact frame storage: every codec round-trips frames of the right shape, close to raw."""

from __future__ import annotations

import io

import numpy as np
import pytest
from loom.models.collate import collate_items
from loom.models.encoder import EncoderConfig
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.image import decode_image
from loom.transforms.items import example_to_item
from loom.transforms.pixels import decode_frames, encode_frames, part_frames
from PIL import Image


def photo(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise: photo-like frames, not flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    frames = [np.stack([(x * 3 + i * 40) % 256, (y * 2) % 256, (x + y + i * 9) % 256], -1)
              + rng.normal(0, 8, (size, size, 3)) for i in range(n)]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec,tol", [("jpeg", 8.0), ("webp", 10.0), ("png", 0.0), ("raw", 0.0)])
def test_codecs_round_trip_frames(codec, tol):
    frames = photo(3, 48)
    data, fmt = encode_frames(frames, codec, 90)
    back = decode_frames(data, fmt, 48, 48)
    assert fmt == codec and back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() <= tol
    # every frame comes back as itself, not as its neighbour in the strip
    for i in range(3):
        errs = [np.abs(back[i].astype(int) - frames[j]).mean() for j in range(3)]
        assert int(np.argmin(errs)) == i
    if codec in ("jpeg", "webp"):
        assert len(data) * 4 < frames.nbytes


def test_too_tall_strip_falls_back_to_raw():
    frames = np.zeros((400, 48, 48, 3), np.uint8)  # 19,200 px tall: past WebP's 16,383
    data, fmt = encode_frames(frames, "webp")
    assert fmt == "raw" and len(data) == frames.nbytes
    assert decode_frames(data, fmt, 48, 48).shape == frames.shape


def test_format_mismatch_and_bad_shapes_raise():
    data, _ = encode_frames(photo(1, 32), "png")
    with pytest.raises(ValueError, match="pixel_format says jpeg"):
        decode_frames(data, "jpeg", 32, 32)
    with pytest.raises(ValueError, match="not frames of"):
        decode_frames(data, "png", 48, 48)
    with pytest.raises(ValueError, match="codec must be"):
        encode_frames(photo(1, 32), "gif")
    with pytest.raises(ValueError, match=r"\(F, H, W, 3\)"):
        encode_frames(np.zeros((32, 32, 3), np.uint8))


def test_default_spec_stores_jpeg_and_collate_reads_it():
    img = Image.fromarray(photo(1, 96)[0])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    jpeg = decode_image(buf.getvalue(), PreprocessingSpec())
    raw = decode_image(buf.getvalue(), PreprocessingSpec(image_codec="raw"))
    assert jpeg["pixel_format"] == "jpeg" and raw["pixel_format"] == "raw"
    assert len(jpeg["pixels"]) * 3 < len(raw["pixels"])
    assert np.abs(part_frames(jpeg).astype(int) - part_frames(raw)).mean() < 6  # noise sigma 8 costs JPEG ~4.4
    cfg = EncoderConfig(image_size=48, patch_size=8)
    batches = [collate_items([example_to_item({"id": "x", "modality": "image", "parts": [p]})], cfg)
               for p in (jpeg, raw)]
    a, b = (x["patches"].numpy() for x in batches)
    assert a.shape == b.shape and np.abs(a - b).mean() < 0.05  # in [-1, 1] units


def test_interleaved_item_stacks_frames_in_first_format():
    a = decode_image(_png(photo(1, 64, seed=1)[0]), PreprocessingSpec())
    b = decode_image(_png(photo(1, 64, seed=2)[0]), PreprocessingSpec(image_codec="raw"))
    item = example_to_item({"id": "r", "modality": "interleaved", "parts": [a, b]})
    assert item["pixel_format"] == "jpeg" and item["frames"] == 2
    frames = decode_frames(item["pixels"], item["pixel_format"], 48, 48)
    assert frames.shape == (2, 48, 48, 3)
    assert np.abs(frames[1].astype(int) - part_frames(b)[0]).mean() < 6  # noise sigma 8 costs JPEG ~4.4


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()
