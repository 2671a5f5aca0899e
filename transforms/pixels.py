"""Compact storage of decoded frames: one image file per part, the frames stacked vertically.

A part's `pixels` hold either raw uint8 RGB (`pixel_format` "raw" or null) or one encoded
image of height `frames * height` (JPEG by default: ~8x smaller than raw at 48 px and
~15x at 224 px, for about 0.2-0.7 ms of decode per frame; measured in
tests/benchmarks/RESULTS.md). Frame heights are multiples of 16 in practice, so JPEG
blocks never straddle two frames.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

CODECS = ("jpeg", "webp", "png", "raw")
_PIL_FORMAT = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
_MAX_SIDE = {"jpeg": 65_500, "webp": 16_383, "png": 1 << 30}


def encode_frames(frames: np.ndarray | Image.Image, codec: str = "jpeg",
                  quality: int = 90) -> tuple[bytes, str]:
    """(bytes, pixel_format) for uint8 frames (F, H, W, 3) or one RGB image.

    Raw when the strip would be too tall for the codec.
    """
    if isinstance(frames, Image.Image):
        if frames.mode != "RGB":
            raise ValueError(f"image mode must be RGB, not {frames.mode}")
        if codec not in _PIL_FORMAT:
            frames = np.asarray(frames)[None]
        else:  # one frame: straight from Pillow, no numpy round trip
            return _save(frames, codec, quality), codec
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), not {frames.shape}")
    f, h, w, _ = frames.shape
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, not {codec!r}")
    if codec == "raw" or f * h > _MAX_SIDE[codec]:
        return frames.tobytes(), "raw"
    return _save(Image.fromarray(frames.reshape(f * h, w, 3), "RGB"), codec, quality), codec


def _save(img: Image.Image, codec: str, quality: int) -> bytes:
    buf = io.BytesIO()
    options = {"quality": quality} if codec in ("jpeg", "webp") else {"compress_level": 1}
    img.save(buf, _PIL_FORMAT[codec], **options)
    return buf.getvalue()


def decode_frames(data: bytes, pixel_format: str | None, height: int, width: int) -> np.ndarray:
    """uint8 (F, H, W, 3) from a part's or item's pixels, whatever their format."""
    if not pixel_format or pixel_format == "raw":
        n = len(data) // (height * width * 3)
        return np.frombuffer(data, np.uint8)[: n * height * width * 3].reshape(n, height, width, 3)
    if pixel_format not in _PIL_FORMAT:
        raise ValueError(f"unknown pixel_format {pixel_format!r}")
    with Image.open(io.BytesIO(data)) as img:
        if img.format != _PIL_FORMAT[pixel_format]:
            raise ValueError(f"pixels say {img.format}, pixel_format says {pixel_format}")
        arr = np.asarray(img.convert("RGB"))
    if arr.shape[1] != width or arr.shape[0] % height:
        raise ValueError(f"a {arr.shape[1]}x{arr.shape[0]} strip is not frames of {width}x{height}")
    return arr.reshape(-1, height, width, 3)


def part_frames(part: dict) -> np.ndarray:
    """A PART's (or ITEM's, given height/width) frames as uint8 (F, H, W, 3)."""
    return decode_frames(part["pixels"], part.get("pixel_format"), int(part["height"]),
                         int(part["width"]))
