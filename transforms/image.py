"""Image bytes to a fixed-size RGB part: orientation, mode, frame(s), resize, crop.

Animated GIF/APNG/WebP give their first frame, or with spec.image_frames > 1 up to that
many frames spread evenly over the animation, as pixels (frames, S, S, 3).
"""

from __future__ import annotations

import functools
import io
import threading
import warnings

import numpy as np
from loom.schemas.records import Modality, Reason, empty_part
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.pixels import encode_frames
from loom.transforms.sniff import DecodeError
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

# Image.MAX_IMAGE_PIXELS is process-global; the guard is set per call under a lock.
_GUARD = threading.Lock()
_TRUNCATION_HINTS = ("truncated", "end of file", "eof", "broken", "incomplete", "ended")
# Formats whose extra frames are animation (not pages of a TIFF or views of an MPO).
_ANIMATED = frozenset({"GIF", "PNG", "WEBP"})


def _open(data: bytes, max_pixels: int) -> Image.Image:
    with _GUARD:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DecodeError(Reason.DECOMPRESSION_BOMB, str(e)) from None
        except UnidentifiedImageError as e:
            raise DecodeError(Reason.DECODE_ERROR, f"not a decodable image: {e}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise DecodeError(Reason.DECODE_ERROR, f"bad image header: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = img.size
    if w <= 0 or h <= 0:
        raise DecodeError(Reason.DECODE_ERROR, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise DecodeError(Reason.DECOMPRESSION_BOMB, f"{w}x{h} exceeds {max_pixels} pixels")
    return img


@functools.cache
def _lab_to_srgb() -> ImageCms.ImageCmsTransform:
    return ImageCms.buildTransformFromOpenProfiles(
        ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _keyed_white(rgb: Image.Image, transparent: np.ndarray) -> Image.Image:
    """`rgb` with the pixels a tRNS colour key marks transparent made white (on white,
    as alpha is composited)."""
    if not transparent.any():
        return rgb
    arr = np.array(rgb)
    arr[transparent] = 255
    return Image.fromarray(arr, "RGB")


def _rgb_key(img: Image.Image, key: tuple) -> Image.Image:
    """RGB with a tRNS key Pillow leaves unapplied: a 16-bit PNG's key holds 16-bit
    values while Pillow keeps 8 bits a channel (their high bytes), so it is compared
    at 8 bits (a value over 255 tells the key is 16-bit)."""
    key8 = np.array([v >> 8 for v in key] if any(v > 255 for v in key) else key, np.uint8)
    return _keyed_white(img, (np.asarray(img) == key8).all(axis=2))


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    key = img.info.get("transparency")
    if mode == "LAB":  # CIE L*a*b* (TIFF): a colour-managed transform, not a channel copy
        return ImageCms.applyTransform(img, _lab_to_srgb())
    if mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        return _rgb_key(img, key)
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        a = np.asarray(img, dtype=np.float64)
        keyed = a == key if isinstance(key, int) and not isinstance(key, bool) else None
        top = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16"):
            a = a / 257.0
        elif mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a * (255.0 / (65535.0 if top <= 65535.0 else top))
        rgb = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
        return rgb if keyed is None else _keyed_white(rgb, keyed)  # tRNS on 16-bit grey
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return _on_white(img)
    return img if mode == "RGB" else img.convert("RGB")


def _fit(rgb: Image.Image, size: int) -> Image.Image:
    return ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)


def _frame_indices(img: Image.Image, want: int, max_pixels: int) -> list[int]:
    """Evenly spaced frame indices, at most `want`; [0] for a still image.

    Seeking decodes every frame before the target at full canvas size, so the span
    sampled is capped to the frames whose canvases fit in max_pixels together.
    """
    n = int(getattr(img, "n_frames", 1)) if want > 1 and img.format in _ANIMATED else 1
    if n <= 1:
        return [0]
    w, h = img.size
    span = min(n, max(1, max_pixels // (w * h)))
    picks = np.rint(np.linspace(0, span - 1, min(want, span))).astype(int)
    return sorted({int(i) for i in picks})


def decode_image(data: bytes, spec: PreprocessingSpec) -> dict:
    """A PART dict (kind image): uint8 RGB pixels (frames, size, size, 3), usually 1 frame."""
    return decode_image_frames(data, spec)[0]


def decode_image_frames(data: bytes, spec: PreprocessingSpec) -> tuple[dict, Image.Image]:
    """`decode_image`'s part and its first frame as stored, before encoding (RGB)."""
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("ImageFile.LOAD_TRUNCATED_IMAGES must be False")
    size = spec.image_size
    img = _open(data, spec.max_image_pixels)
    fmt = img.format
    try:
        if fmt == "JPEG":
            img.draft(None, (size, size))  # DCT scaling: decode at >= size, much faster
        img.load()  # first frame only; raises on truncated data
        indices = _frame_indices(img, spec.image_frames, spec.max_image_pixels)
        if len(indices) == 1:
            ImageOps.exif_transpose(img, in_place=True)  # our own image: no copy
            outs = [_fit(_to_rgb(img), size)]
        else:
            outs = []
            for i in indices:  # increasing: Pillow composites each frame (disposal, blend)
                img.seek(i)
                outs.append(_fit(_on_white(ImageOps.exif_transpose(img)), size))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(Reason.DECOMPRESSION_BOMB, str(e)) from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        text = str(e).lower()
        reason = (Reason.TRUNCATED if isinstance(e, EOFError)
                  or any(h in text for h in _TRUNCATION_HINTS) else Reason.DECODE_ERROR)
        raise DecodeError(reason, f"{fmt or 'image'}: {type(e).__name__}: {e}") from None
    part = empty_part(Modality.IMAGE.value)
    frames = outs[0] if len(outs) == 1 else np.stack([np.asarray(o) for o in outs])
    part.update(frames_payload(frames, spec),
                height=size, width=size, frames=len(outs), mime=Image.MIME.get(fmt or "", None))
    return part, outs[0]


def fit_part(img: Image.Image, spec: PreprocessingSpec, kind: str = Modality.IMAGE.value) -> dict:
    """An already-decoded RGB image (a rendered page, say) resized like `decode_image`."""
    size = spec.image_size
    out = _fit(_to_rgb(img), size)
    part = empty_part(kind)
    part.update(frames_payload(out, spec), height=size, width=size, frames=1)
    return part


def frames_payload(frames: np.ndarray | Image.Image, spec: PreprocessingSpec) -> dict:
    """{"pixels", "pixel_format"} for uint8 frames (F, S, S, 3) or one RGB image, as the spec says."""
    data, fmt = encode_frames(frames, spec.image_codec, spec.image_quality)
    return {"pixels": data, "pixel_format": fmt}
