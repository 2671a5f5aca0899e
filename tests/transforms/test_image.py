from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from schemas.records import PART, Reason
from schemas.spec import PreprocessingSpec
from tests.transforms.helpers import encode, png_bomb
from transforms.image import decode_image
from transforms.sniff import DecodeError

SPEC = PreprocessingSpec(image_size=48)


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
