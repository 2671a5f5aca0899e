"""Text bytes to clean Unicode: encoding detection, NFC, control characters, whitespace."""

from __future__ import annotations

import codecs
import re
import unicodedata

from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.sniff import DecodeError, _looks_utf16

try:  # optional: better guesses for multi-byte legacy encodings (Shift-JIS, GBK, ...)
    from charset_normalizer import from_bytes as _detect
except ImportError:  # pragma: no cover
    _detect = None

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_SINGLE_BYTE = re.compile(r"^(cp\d+|latin|iso8859|mac|koi8|tis|kz|ptcp|hp_roman|ascii)")
_KEEP = {"\n", "\t"}
_BAD_CATEGORIES = {"Cc", "Co", "Cn", "Cs"}
_HSPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def _garbage(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for c in text if c == "\ufffd" or (
        c not in _KEEP and c != "\r" and unicodedata.category(c) in _BAD_CATEGORIES))
    return bad / len(text) > 0.10


def _decode(data: bytes) -> str:
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(enc, errors="replace")
    if _looks_utf16(data[:8192]):
        even_nuls = data[0::2].count(0) > data[1::2].count(0)
        return data.decode("utf-16-be" if even_nuls else "utf-16-le", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if data.count(0) > max(1, len(data) // 100):
        raise DecodeError(Reason.BAD_ENCODING, "binary content (NUL bytes), not text")
    best = _detect(data).best() if _detect is not None else None
    if best is not None and not _SINGLE_BYTE.match(best.encoding):
        return str(best)  # a multi-byte encoding that decodes strictly: trust it
    try:  # short Western text: detectors confuse code pages; cp1252 is the common one
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return str(best) if best is not None else data.decode("latin-1")


def clean_text(text: str, max_chars: int) -> str:
    """NFC, control characters dropped (\\n and \\t kept), whitespace collapsed, capped."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(c for c in text if c in _KEEP or c == " " or (
        unicodedata.category(c) not in ("Cc", "Cs", "Co") and c not in "\ufeff\u200b"))
    text = _HSPACE.sub(lambda m: "\t" if "\t" in m.group() else " ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    text = _BLANK_LINES.sub("\n\n", text).strip()
    return text[:max_chars].rstrip()


def decode_text(data: bytes, spec: PreprocessingSpec) -> str:
    """Bytes to clean text; raises DecodeError (empty or decode_error) when there is none."""
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    text = _decode(data)
    if _garbage(text):
        raise DecodeError(Reason.BAD_ENCODING, "undecodable or binary content, not text")
    text = clean_text(text, spec.max_text_chars)
    if not text:
        raise DecodeError(Reason.EMPTY, "no text left after cleaning")
    return text
