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
    (0, b"FLV\x01", _VIDEO, "video/x-flv"),
    (0, b"\x00\x00\x01\xba", _VIDEO, "video/mpeg"),  # MPEG program stream (.mpg, .vob)
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", _VIDEO, "video/x-ms-asf"),  # .wmv, .wma
    (0, b"caff", _AUDIO, "audio/x-caf"),
    (0, b".snd", _AUDIO, "audio/basic"),
    (0, b"#!AMR", _AUDIO, "audio/amr"),
    (0, b"wvpk", _AUDIO, "audio/x-wavpack"),
    (0, b"DKIF", _VIDEO, "video/x-ivf"),
)
# Compressed streams: never text by their bytes; ingest inflates them (bounded) or refuses.
COMPRESSED: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "application/gzip"),
    (b"\xfd7zXZ\x00", "application/x-xz"),
    (b"\x28\xb5\x2f\xfd", "application/zstd"),
    (b"BZh", "application/x-bzip2"),
)
_RIFF = {b"WEBP": (_IMAGE, "image/webp"), b"WAVE": (_AUDIO, "audio/wav"),
         b"AVI ": (_VIDEO, "video/x-msvideo")}
_FORM = {b"AIFF": (_AUDIO, "audio/aiff"), b"AIFC": (_AUDIO, "audio/aiff")}
_TS_PACKET = 188
_FTYP_BRANDS = {b"M4A ": (_AUDIO, "audio/mp4"), b"M4B ": (_AUDIO, "audio/mp4"),
                b"avif": (_IMAGE, "image/avif"), b"avis": (_IMAGE, "image/avif"),
                b"heic": (_IMAGE, "image/heic"), b"heix": (_IMAGE, "image/heic"),
                b"mif1": (_IMAGE, "image/heif"), b"qt  ": (_VIDEO, "video/quicktime")}
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_TEXT_CONTROLS = set(b"\t\n\r\x0c\x0b\x1b")


def compression(data: bytes) -> str | None:
    """The mime of a gzip/xz/zstd/bzip2 stream by its magic, else None."""
    for magic, mime in COMPRESSED:
        if data.startswith(magic) and (magic != b"BZh" or data[3:4].isdigit()):
            return mime
    return None


def _mpegts(data: bytes) -> bool:
    """MPEG-TS has no magic at byte 0: a 0x47 sync byte starts every 188-byte packet
    (M2TS/.mts: every 192 bytes, after a 4-byte timecode). Three packets must agree,
    or every packet of a shorter sample."""
    for start, step in ((0, _TS_PACKET), (4, _TS_PACKET + 4)):
        at = range(start, min(len(data), start + 3 * step), step)
        if len(at) >= 2 and all(data[i] == 0x47 for i in at):
            return True
    return False


def _dv(data: bytes) -> bool:
    """A DV DIF header block: section 0, sequence 0 (FFmpeg's dv_probe marker)."""
    return data[:3] == b"\x1f\x07\x00" and len(data) > 3 and data[3] & 0x7F == 0x3F


def _magic(data: bytes) -> tuple[Modality, str] | None:
    for off, magic, modality, mime in _MAGIC:
        if data.startswith(magic, off):
            return modality, mime
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[:4] == b"FORM" and data[8:12] in _FORM:
        return _FORM[data[8:12]]
    if _mpegts(data):
        return _VIDEO, "video/mp2t"
    if _dv(data):
        return _VIDEO, "video/dv"
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


def looks_utf32(sample: bytes) -> str | None:
    """The codec of BOM-less UTF-32 ("utf-32-le"/"-be"): every unit's top byte NUL and
    the sample decodes strictly. None otherwise."""
    n = len(sample) // 4 * 4
    if n < 8:
        return None
    for codec, top in (("utf-32-le", sample[3:n:4]), ("utf-32-be", sample[0:n:4])):
        if top.count(0) == len(top):
            try:
                sample[:n].decode(codec)
            except UnicodeDecodeError:
                continue
            return codec
    return None


def looks_utf16_wide(sample: bytes) -> str | None:
    """BOM-less UTF-16 of a non-Latin script (Cyrillic, kana, Hangul...): few distinct
    high bytes carry most units, the sample decodes strictly, and it is printable."""
    n = len(sample) // 2 * 2
    if n < 16:
        return None
    for codec, high in (("utf-16-le", sample[1:n:2]), ("utf-16-be", sample[0:n:2])):
        counts = sorted((high.count(b) for b in set(high)), reverse=True)
        if sum(counts[:4]) < 0.6 * len(high):
            continue
        try:
            text = sample[:n].decode(codec)
        except UnicodeDecodeError:
            continue
        if sum(c.isprintable() or c.isspace() for c in text) > 0.95 * len(text):
            return codec
    return None


def looks_like_text(data: bytes) -> bool:
    """Decodes as UTF-8, carries a Unicode BOM, is UTF-16/32 without one, or is mostly
    printable bytes."""
    sample = data[:8192]
    if not sample or compression(sample):
        return False
    if sample.startswith(_BOMS) or _looks_utf16(sample) or looks_utf32(sample):
        return True
    if b"\x00" in sample:
        return looks_utf16_wide(sample) is not None
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError as e:
        if e.start >= len(sample) - 3:  # a multi-byte char cut by the sample window
            return True
    if looks_utf16_wide(sample):
        return True
    # A legacy code page (cp1251, Shift-JIS, ...): bytes >= 0x80 are its letters, so
    # only control bytes tell binary data apart (random bytes hold ~12% of them).
    controls = sum(1 for b in sample if b < 0x20 and b not in _TEXT_CONTROLS or b == 0x7F)
    return controls / len(sample) < 0.01


def sniff(data: bytes, uri: str = "") -> tuple[Modality | None, str | None]:
    """(modality, mime) of a file: magic bytes, then text detection, then the extension.

    A compressed stream is (None, its mime): ingest inflates it. The extension never
    makes text of bytes that do not look like text (`.ts` is MPEG-TS far more often
    than TypeScript or Qt Linguist).
    """
    found = _magic(data)
    if found:
        return found
    if packed := compression(data):
        return None, packed
    if looks_like_text(data):
        return Modality.TEXT, "text/plain"
    mime, _ = mimetypes.guess_type(posixpath.basename(uri or ""))
    if mime:
        top = mime.split("/")[0]
        if mime == "application/pdf":
            return Modality.PAGE, mime
        if top in ("image", "audio", "video"):
            return Modality(top), mime
    return None, None
