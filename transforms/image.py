"""Image bytes to a fixed-size RGB part: orientation, mode, first frame, resize, crop."""

from __future__ import annotations

import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from schemas.records import Modality, Reason, empty_part
from schemas.spec import PreprocessingSpec
from transforms.sniff import DecodeError

# Image.MAX_IMAGE_PIXELS is process-global; the guard is set per call under a lock.
_GUARD = threading.Lock()
_TRUNCATION_HINTS = ("truncated", "end of file", "eof", "broken", "incomplete", "ended")


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


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        a = np.asarray(img, dtype=np.float64)
        top = float(a.max()) if a.size else 0.0
        if mode.startswith("I;16"):
            a = a / 257.0
        elif mode == "F" and top <= 1.0:
            a = a * 255.0
        elif top > 255.0:
            a = a * (255.0 / (65535.0 if top <= 65535.0 else top))
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def decode_image(data: bytes, spec: PreprocessingSpec) -> dict:
    """A PART dict (kind image) with uint8 RGB pixels of shape (size, size, 3)."""
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
        img = ImageOps.exif_transpose(img)
        rgb = _to_rgb(img)
        out = ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC)
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
    part.update(pixels=out.tobytes(), height=size, width=size, frames=1,
                mime=Image.MIME.get(fmt or "", None))
    return part


def fit_part(img: Image.Image, spec: PreprocessingSpec, kind: str = Modality.IMAGE.value) -> dict:
    """An already-decoded RGB image (a rendered page, say) resized like `decode_image`."""
    size = spec.image_size
    out = ImageOps.fit(_to_rgb(img), (size, size), method=Image.Resampling.BICUBIC)
    part = empty_part(kind)
    part.update(pixels=out.tobytes(), height=size, width=size, frames=1)
    return part
