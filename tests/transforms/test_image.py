from __future__ import annotations

import numpy as np
import pytest
from loom.schemas.records import PART, Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.image import decode_image
from loom.transforms.pixels import part_frames
from loom.transforms.sniff import DecodeError
from PIL import Image

from tests.transforms.helpers import encode, png_bomb

SPEC = PreprocessingSpec(image_size=48, image_codec="raw")  # exact pixels; codecs: test_pixels


def pixels(part: dict) -> np.ndarray:
    assert part["kind"] == "image" and part["frames"] == 1
    assert part["height"] == part["width"] == SPEC.image_size
    assert set(part) == set(PART.names)
    arr = np.frombuffer(part["pixels"], dtype=np.uint8)
    return arr.reshape(SPEC.image_size, SPEC.image_size, 3)


def center(part: dict) -> tuple[int, ...]:
    return tuple(int(v) for v in pixels(part)[24, 24])


def test_rgb_png_resized_and_mime():
    part = decode_image(encode(Image.new("RGB", (200, 100), (10, 200, 30))), SPEC)
    assert center(part) == (10, 200, 30) and part["mime"] == "image/png"


def test_palette():
    img = Image.new("P", (30, 30), 1)
    img.putpalette([0, 0, 0, 250, 20, 10] + [0] * 762)
    assert center(decode_image(encode(img), SPEC)) == (250, 20, 10)


def test_palette_transparency_composited_on_white():
    img = Image.new("P", (30, 30), 1)
    img.putpalette([0, 0, 0, 250, 20, 10] + [0] * 762)
    assert center(decode_image(encode(img, transparency=1), SPEC)) == (255, 255, 255)


def test_rgba_alpha_composited_on_white():
    assert center(decode_image(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 0))), SPEC)) == (
        255, 255, 255)
    r, g, b = center(decode_image(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 128))), SPEC))
    assert r == 255 and 120 <= g <= 135 and g == b


def test_cmyk():
    r, g, b = center(decode_image(encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "TIFF"),
                                  SPEC))
    assert r > 240 and g < 15 and b < 15


def test_greyscale_l():
    assert center(decode_image(encode(Image.new("L", (40, 40), 128)), SPEC)) == (128, 128, 128)


def test_16_bit_greyscale_scaled():
    img = Image.fromarray(np.full((40, 40), 32896, dtype=np.uint16))
    assert img.mode.startswith("I;16")
    assert center(decode_image(encode(img), SPEC)) == (128, 128, 128)


def test_float_greyscale():
    img = Image.fromarray(np.full((40, 40), 0.5, dtype=np.float32))
    assert img.mode == "F"
    assert center(decode_image(encode(img, "TIFF"), SPEC)) == (128, 128, 128)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    r, g, b = center(decode_image(data, SPEC))
    assert r > 200 and b < 50


def test_exif_orientation_applied():
    img = Image.new("L", (128, 64), 0)
    img.paste(255, (64, 0, 128, 64))  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = rotate 90 degrees clockwise: left half goes on top
    px = pixels(decode_image(encode(img.convert("RGB"), "JPEG", exif=exif.tobytes()), SPEC))
    assert px[2, 24].mean() < 40 and px[-3, 24].mean() > 215
    plain = pixels(decode_image(encode(img.convert("RGB"), "JPEG"), SPEC))
    assert plain[24, 2].mean() < 40 and plain[24, -3].mean() > 215


def test_large_jpeg_uses_draft_and_center_crop():
    img = Image.new("RGB", (2400, 1200), (0, 0, 255))
    img.paste((255, 255, 0), (1200 - 600, 0, 1200 + 600, 1200))  # middle half yellow
    px = pixels(decode_image(encode(img, "JPEG", quality=90), SPEC))
    assert px[:, :, 2].max() < 80  # the blue sides were cropped away


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    with pytest.raises(DecodeError) as e:
        decode_image(data[: len(data) // 2], SPEC)
    assert e.value.reason == Reason.TRUNCATED


def test_empty_and_garbage():
    with pytest.raises(DecodeError) as e:
        decode_image(b"", SPEC)
    assert e.value.reason == Reason.EMPTY
    with pytest.raises(DecodeError) as e:
        decode_image(b"this is a text file, not an image", SPEC)
    assert e.value.reason == Reason.DECODE_ERROR


def test_decompression_bomb_header_too_large():
    saved = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DecodeError) as e:
        decode_image(png_bomb(), SPEC)
    assert e.value.reason == Reason.DECOMPRESSION_BOMB
    assert Image.MAX_IMAGE_PIXELS == saved


@pytest.mark.parametrize("limit", [100, 6000])  # Pillow's error (>2x) and warning ranges
def test_small_pixel_limit_too_large(limit):
    spec = PreprocessingSpec(image_size=48, max_image_pixels=limit)
    with pytest.raises(DecodeError) as e:
        decode_image(encode(Image.new("RGB", (96, 96))), spec)
    assert e.value.reason == Reason.DECOMPRESSION_BOMB


COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255))


def animation(fmt: str = "GIF", size: int = 40, **kw) -> bytes:
    frames = [Image.new("RGB", (size, size), c) for c in COLORS]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **kw)


def frame_stack(part: dict, spec: PreprocessingSpec) -> np.ndarray:
    s = spec.image_size
    assert part["height"] == part["width"] == s
    assert part["pixel_format"] == spec.image_codec
    arr = part_frames(part)
    assert arr.shape == (part["frames"], s, s, 3)
    return arr


def dominant(frame: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.rint(frame.reshape(-1, 3).mean(axis=0)))


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 8) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("fmt,kw", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animation_frames_spread_evenly(fmt, kw):
    spec = PreprocessingSpec(image_size=48, image_frames=3)
    part = decode_image(animation(fmt, **kw), spec)
    assert part["frames"] == 3  # stored as one JPEG strip (the default codec)
    first, middle, last = (dominant(f) for f in frame_stack(part, spec))
    assert close(first, COLORS[0]) and close(last, COLORS[5])
    assert close(middle, COLORS[2]) or close(middle, COLORS[3])  # index round(2.5)


def test_animation_default_is_first_frame_only():
    assert SPEC.image_frames == 1
    part = decode_image(animation(), SPEC)
    assert part["frames"] == 1 and dominant(pixels(part)) == COLORS[0]


def test_animation_more_frames_wanted_than_present():
    spec = PreprocessingSpec(image_size=16, image_frames=64, image_codec="raw")
    stack = frame_stack(decode_image(animation(), spec), spec)
    assert [dominant(f) for f in stack] == list(COLORS)


def test_still_image_with_image_frames_is_one_frame():
    spec = PreprocessingSpec(image_size=48, image_frames=4)
    part = decode_image(encode(Image.new("RGB", (40, 40), (10, 200, 30))), spec)
    assert part["frames"] == 1
    assert close(dominant(frame_stack(part, spec)[0]), (10, 200, 30), tol=2)


def test_gif_frames_composited_with_disposal():
    palette = [v for c in COLORS for v in c] + [0] * (768 - 3 * len(COLORS))
    frames = []
    for i in range(len(COLORS)):
        im = Image.new("P", (40, 40), 0 if i == 0 else 9)  # 9: transparent
        im.putpalette(palette)
        if i:
            im.paste(i, (10, 10, 30, 30))
        frames.append(im)
    spec = PreprocessingSpec(image_size=40, image_frames=2, image_codec="raw")
    for disposal, corner in ((1, COLORS[0]), (2, (255, 255, 255))):
        data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100,
                      disposal=disposal, transparency=9, optimize=False)
        first, last = frame_stack(decode_image(data, spec), spec)
        assert tuple(first[20, 20]) == COLORS[0] and tuple(last[20, 20]) == COLORS[5]
        assert tuple(last[1, 1]) == corner  # kept frame 0 under it, or cleared to white


def test_animation_span_capped_by_pixel_budget():
    # 40x40 canvases, budget of two: only frames 0..1 are decoded.
    spec = PreprocessingSpec(image_size=16, image_frames=6, max_image_pixels=2 * 40 * 40,
                             image_codec="raw")
    stack = frame_stack(decode_image(animation(), spec), spec)
    assert [dominant(f) for f in stack] == list(COLORS[:2])


def test_lab_converted_to_rgb():
    # Pillow's LAB bytes: L* scaled to 0..255, a* and b* offset by 128; L=53 a=80 b=67 is red.
    lab = Image.new("LAB", (40, 40), (round(53 * 255 / 100), 128 + 80, 128 + 67))
    r, g, b = center(decode_image(encode(lab, "TIFF"), SPEC))
    assert r > 180 and g < 80 and b < 80
    grey = Image.new("LAB", (40, 40), (round(50 * 255 / 100), 128, 128))
    r, g, b = center(decode_image(encode(grey, "TIFF"), SPEC))
    assert max(r, g, b) - min(r, g, b) <= 3 and 110 <= r <= 130


def _png(width: int, height: int, depth: int, colour: int, rows: list[bytes],
         trns: bytes) -> bytes:
    """A PNG written chunk by chunk: Pillow cannot save 16-bit RGB nor every tRNS."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"tRNS", trns)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _halves(part: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    px = pixels(part)
    return tuple(int(v) for v in px[4, 24]), tuple(int(v) for v in px[44, 24])


def test_16_bit_grey_trns_composited_on_white():
    """Top half = the tRNS key (transparent: white), bottom half 0 (opaque black)."""
    import struct
    rows = [struct.pack(">40H", *[1000] * 40) for _ in range(20)]
    rows += [struct.pack(">40H", *[0] * 40) for _ in range(20)]
    top, bottom = _halves(decode_image(_png(40, 40, 16, 0, rows, struct.pack(">H", 1000)),
                                       SPEC))
    assert top == (255, 255, 255) and bottom == (0, 0, 0)


def test_16_bit_rgb_trns_composited_on_white():
    import struct
    key = (0x1234, 0x5678, 0x9ABC)
    rows = [struct.pack(">120H", *key * 40) for _ in range(20)]
    rows += [struct.pack(">120H", *(0x9000, 0x1000, 0x1000) * 40) for _ in range(20)]
    top, bottom = _halves(decode_image(_png(40, 40, 16, 2, rows, struct.pack(">3H", *key)),
                                       SPEC))
    assert top == (255, 255, 255) and bottom == (0x90, 0x10, 0x10)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
def test_low_bit_grey_trns_composited_on_white(depth):
    per_byte = 8 // depth
    top = 0  # the key: value 0 (black) is transparent
    rows = [bytes([top] * (40 // per_byte)) for _ in range(20)]
    rows += [bytes([0xFF] * (40 // per_byte)) for _ in range(20)]  # all ones: white
    import struct
    part = decode_image(_png(40, 40, depth, 0, rows, struct.pack(">H", 0)), SPEC)
    assert _halves(part) == ((255, 255, 255), (255, 255, 255))


def test_8_bit_rgb_trns_composited_on_white():
    import struct
    rows = [bytes((10, 20, 30) * 40) for _ in range(20)] + [bytes((200, 0, 0) * 40)] * 20
    top, bottom = _halves(decode_image(_png(40, 40, 8, 2, rows, struct.pack(">3H", 10, 20, 30)),
                                       SPEC))
    assert top == (255, 255, 255) and bottom == (200, 0, 0)
