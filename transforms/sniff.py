"""Content sniffing: what a file is, from its bytes first and its name only last.

Also home of `DecodeError`, the one error every decoder raises with a stable Reason.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re

from loom.schemas.records import Modality, Reason


# `<_io.BytesIO object at 0x7f..>` in a library's message (Pillow, libsndfile): the
# address differs per process, so the same file would get other bytes on another engine.
_ADDRESS = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")


def stable_message(message: str) -> str:
    """A rejection message without per-process details (object addresses)."""
    return _ADDRESS.sub(r"<\1>", message)


class DecodeError(Exception):
    """A file that cannot become an Example; `reason` is the Rejected row's code."""

    def __init__(self, reason: Reason, message: str):
        message = stable_message(message)
        super().__init__(message)
        self.reason = Reason(reason)
        self.message = message


_IMAGE, _AUDIO, _VIDEO = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO

# (offset, magic, modality, mime), checked in order.
_MAGIC: tuple[tuple[int, bytes, Modality, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", _IMAGE, "image/png"),
    (0, b"\xff\xd8\xff", _IMAGE, "image/jpeg"),
    (0, b"GIF87a", _IMAGE, "image/gif"),
    (0, b"GIF89a", _IMAGE, "image/gif"),
    (0, b"BM", _IMAGE, "image/bmp"),
    (0, b"II*\x00", _IMAGE, "image/tiff"),
    (0, b"MM\x00*", _IMAGE, "image/tiff"),
    (0, b"%PDF-", Modality.PAGE, "application/pdf"),
    (0, b"fLaC", _AUDIO, "audio/flac"),
    (0, b"OggS", _AUDIO, "audio/ogg"),
    (0, b"ID3", _AUDIO, "audio/mpeg"),
)
_RIFF = {b"WEBP": (_IMAGE, "image/webp"), b"WAVE": (_AUDIO, "audio/wav"),
         b"AVI ": (_VIDEO, "video/x-msvideo")}
_FTYP_BRANDS = {b"M4A ": (_AUDIO, "audio/mp4"), b"M4B ": (_AUDIO, "audio/mp4"),
                b"avif": (_IMAGE, "image/avif"), b"avis": (_IMAGE, "image/avif"),
                b"heic": (_IMAGE, "image/heic"), b"heix": (_IMAGE, "image/heic"),
                b"mif1": (_IMAGE, "image/heif"), b"qt  ": (_VIDEO, "video/quicktime")}
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_TEXT_CONTROLS = set(b"\t\n\r\x0c\x0b\x1b")


def _magic(data: bytes) -> tuple[Modality, str] | None:
    for off, magic, modality, mime in _MAGIC:
        if data.startswith(magic, off):
            return modality, mime
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12], (_VIDEO, "video/mp4"))
    if len(data) > 2 and data[0] == 0xFF and data[1] & 0xE6 == 0xE2:  # MPEG audio frame sync
        return _AUDIO, "audio/mpeg"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM or Matroska by DocType
        return (_VIDEO, "video/webm") if b"webm" in data[:64] else (_VIDEO, "video/x-matroska")
    return None


def _looks_utf16(sample: bytes) -> bool:
    """BOM-less UTF-16 of mostly-ASCII text: NULs on one parity only."""
    if len(sample) < 4:
        return False
    even, odd = sample[0::2], sample[1::2]
    e, o = even.count(0) / len(even), odd.count(0) / len(odd)
    return (o > 0.4 and e < 0.05) or (e > 0.4 and o < 0.05)


def looks_like_text(data: bytes) -> bool:
    """Decodes as UTF-8, carries a Unicode BOM, or is mostly printable bytes."""
    sample = data[:8192]
    if not sample:
        return False
    if sample.startswith(_BOMS) or _looks_utf16(sample):
        return True
    if b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3:  # a multi-byte char cut by the sample window
            return True
    controls = sum(1 for b in sample if b < 0x20 and b not in _TEXT_CONTROLS or b == 0x7F)
    printable = sum(1 for b in sample if 0x20 <= b < 0x7F or b in _TEXT_CONTROLS)
    return controls / len(sample) < 0.01 and printable / len(sample) > 0.7


def sniff(data: bytes, uri: str = "") -> tuple[Modality | None, str | None]:
    """(modality, mime) of a file: magic bytes, then text detection, then the extension."""
    found = _magic(data)
    if found:
        return found
    if looks_like_text(data):
        return Modality.TEXT, "text/plain"
    mime, _ = mimetypes.guess_type(posixpath.basename(uri or ""))
    if mime:
        top = mime.split("/")[0]
        if mime == "application/pdf":
            return Modality.PAGE, mime
        if top in ("image", "audio", "video", "text"):
            return Modality(top), mime
    return None, None
