"""Text bytes to clean Unicode: encoding detection, NFC, control characters, whitespace.

Decoding: a BOM decides; else UTF-8 that decodes strictly (almost every file) unless
ISO-2022 escape sequences are present. Otherwise every candidate codec is tried on a
sample: ISO-2022 variants when escapes appear, UTF-16/32 without a BOM when the bytes
have their shape, and the legacy codecs charset-normalizer proposes (plus the common
code pages it tends to leave out). A candidate is faithful only when it decodes
strictly and the language identifier (py3langid, whose model ships in the wheel) places
its words in a language; the best placed wins. When none is faithful the file is
rejected `bad_encoding`: mojibake never reaches the tokenizer's vocabulary.

Cost is bounded by the cap, not the file: only the bytes that can make
`max_text_chars` characters are decoded and cleaned.
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.sniff import DecodeError, _looks_utf16, looks_utf16_wide, looks_utf32

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# ESC $ / ESC ( / ESC ) designate a character set: ISO-2022, not ANSI (ESC [) nor UTF-8.
_ISO2022_ESC = re.compile(rb"\x1b[$()]")
_ISO2022 = ("iso2022_jp_2", "iso2022_jp_ext", "iso2022_jp_2004", "iso2022_kr")
# Common code pages charset-normalizer's short list can leave out (ISO-8859-2 Polish).
_ALWAYS_TRY = ("cp1252", "cp1250", "iso8859_2", "cp1251")
_DETECT_BYTES = 32 * 1024  # what the detector and the candidates see
_LANGID_CHARS = 2000  # what the language identifier scores per candidate
# A faithful decode: the identifier is this sure of one language ...
MIN_LANGUAGE_CONFIDENCE = 0.5
# ... and its n-gram features cover this share of the bytes (mojibake hits few).
MIN_FEATURE_COVERAGE = 0.5
_NOT_A_LANGUAGE = {"zxx", "und"}  # no linguistic content / undetermined
_KEEP = {"\n", "\t"}
_BAD_CATEGORIES = {"Cc", "Co", "Cn", "Cs"}
_HSPACE = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Cleaning looks at this many characters per character kept, at most.
_WINDOW_FACTOR, _MAX_WINDOW_FACTOR = 2, 32


def _garbage(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for c in text if c == "\ufffd" or (
        c not in _KEEP and c != "\r" and unicodedata.category(c) in _BAD_CATEGORIES))
    return bad / len(text) > 0.10


@functools.cache
def _identifier():
    """py3langid's identifier, loaded once per process (~3 s), only for non-UTF-8 files."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def placement(text: str) -> tuple[str, float]:
    """(language, score): how well the identifier places `text` in a language.

    score = its confidence x the share of the text's bytes its n-gram features cover:
    mojibake of a real text is often still put in *some* language (Thai for bytes read
    as cp874), but with few of that language's n-grams. 0.0 when no language fits.
    """
    from py3langid.langid import visit_counts

    ident = _identifier()
    sample = text[:_LANGID_CHARS]
    lang, confidence = ident.classify(sample)
    encoded = ident._encode(sample)  # the identifier's own normalization: NFC, UTF-8
    visits = visit_counts(ident.tk_nextmove, ident._rowbase, ident.tk_output, encoded)
    coverage = sum(visits.values()) / len(encoded) if visits and encoded else 0.0
    if (lang in _NOT_A_LANGUAGE or confidence < MIN_LANGUAGE_CONFIDENCE
            or coverage < MIN_FEATURE_COVERAGE):
        return lang, 0.0
    return lang, float(confidence) * coverage * (1.0 - min(1.0, 4.0 * _orphan_marks(sample)))


# Thai vowels written before their consonant, and sara am / mai yamok / paiyannoi:
# a combining mark never follows one of them in Thai.
_NO_MARK_AFTER = frozenset("\u0e40\u0e41\u0e42\u0e43\u0e44\u0e33\u0e46\u0e2f")


def _orphan_marks(text: str) -> float:
    """Share of combining marks (Mn) with no letter to sit on: after a space, a
    punctuation mark, the start, or a letter that takes none. Real text has almost
    none; a code page misread as Thai or Hebrew scatters them (cp874 mojibake)."""
    marks = orphans = 0
    prev = " "
    for c in text:
        if unicodedata.category(c) == "Mn":
            marks += 1
            base = prev
            if not (unicodedata.category(base)[0] == "L" or unicodedata.category(base) == "Mn") \
                    or base in _NO_MARK_AFTER:
                orphans += 1
        prev = c
    letters = sum(1 for c in text if c.isalpha()) or 1
    return orphans / letters


def _controls(text: str) -> bool:
    """More than 1% C0 control characters other than whitespace and ESC."""
    n = sum(1 for c in text if c < " " and c not in "\t\n\r\x0b\x0c\x1b")
    return n > 0.01 * len(text)


def _strict(data: bytes, codec: str, final: bool) -> str | None:
    """`data` decoded strictly (a cut multi-byte tail tolerated unless final), or None."""
    try:
        return codecs.getincrementaldecoder(codec)(errors="strict").decode(data, final=final)
    except (UnicodeDecodeError, LookupError):
        return None


def _candidates(sample: bytes) -> list[tuple[str, float]]:
    """(codec, detector coherence) pairs worth scoring, most likely first."""
    if _ISO2022_ESC.search(sample):
        return [(c, 0.0) for c in _ISO2022]
    out: list[tuple[str, float]] = []
    for wide in (looks_utf32(sample), looks_utf16_wide(sample)):
        if wide:
            out.append((wide, 0.0))
    if _looks_utf16(sample):
        even_nuls = sample[0::2].count(0) > sample[1::2].count(0)
        out.append(("utf-16-be" if even_nuls else "utf-16-le", 0.0))
    if sample.count(0) > max(1, len(sample) // 100):
        return out  # NULs: a wide Unicode form or binary, never a legacy code page
    from charset_normalizer import from_bytes

    for match in from_bytes(sample):
        out.append((match.encoding, float(match.coherence)))
    known = {codecs.lookup(c).name for c, _ in out}
    return out + [(c, 0.0) for c in _ALWAYS_TRY if codecs.lookup(c).name not in known]


def detect_codec(data: bytes) -> str:
    """The codec that decodes `data` faithfully; DecodeError(bad_encoding) if none does."""
    sample = data[:_DETECT_BYTES]
    final = len(data) <= _DETECT_BYTES
    best, best_score, tried = None, 0.0, []
    for codec, coherence in _candidates(sample):
        text = _strict(sample, codec, final)
        if text is None or not text.strip() or _garbage(text):
            continue
        lang, score = placement(text)
        tried.append(f"{codec}:{lang}")
        score += 0.01 * coherence  # the detector's coherence only breaks near-ties
        if score > best_score:
            best, best_score = codec, score
    if best is None:
        how = f" (no language in {', '.join(tried[:6])})" if tried else ""
        raise DecodeError(Reason.BAD_ENCODING, f"no codec decodes it as text in a language{how}")
    return best


def _decode(data: bytes, max_bytes: int) -> str:
    """The first `max_bytes` of `data` as text (a cut multi-byte tail dropped)."""
    head, final = data[:max_bytes], len(data) <= max_bytes
    for bom, enc in _BOMS:
        if data.startswith(bom):
            return codecs.getincrementaldecoder(enc)(errors="replace").decode(
                head[len(bom):], final=final)
    utf8 = None if _ISO2022_ESC.search(head[:_DETECT_BYTES]) else _strict(head, "utf-8", final)
    if utf8 is not None and not _controls(utf8[:_DETECT_BYTES]):
        return utf8  # control bytes in valid UTF-8: maybe BOM-less UTF-16/32 (Cyrillic...)
    try:
        codec = detect_codec(data)
    except DecodeError:
        if utf8 is None:
            raise
        return utf8  # valid UTF-8 after all: the garbage check decides
    return codecs.getincrementaldecoder(codec)(errors="replace").decode(head, final=final)


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "".join(c for c in text if c in _KEEP or c == " " or (
        unicodedata.category(c) not in ("Cc", "Cs", "Co") and c not in "\ufeff\u200b"))
    text = _HSPACE.sub(lambda m: "\t" if "\t" in m.group() else " ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def clean_text(text: str, max_chars: int) -> str:
    """NFC, control characters dropped (\\n and \\t kept), whitespace collapsed, capped.

    Cleans a window of the text a little longer than the cap, widening it only while
    cleaning leaves fewer than `max_chars` (runs of whitespace or control characters),
    up to `_MAX_WINDOW_FACTOR` x the cap: the cost follows the cap, not the input.
    """
    window = _WINDOW_FACTOR * max_chars + 64
    while True:
        out = _clean(text[:window])
        if len(out) > max_chars or window >= len(text) or window >= _MAX_WINDOW_FACTOR * max_chars:
            return out[:max_chars].rstrip()
        window *= 4


def text_bytes_needed(spec: PreprocessingSpec) -> int:
    """Bytes that can make the widest clean window: 4 a character at most (UTF-8/32)."""
    return 4 * (_MAX_WINDOW_FACTOR * spec.max_text_chars + 64) + 4


def decode_text(data: bytes, spec: PreprocessingSpec) -> str:
    """Bytes to clean text; raises DecodeError (empty or bad_encoding) when there is none."""
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    text = _decode(data, text_bytes_needed(spec))
    if _garbage(text[: _WINDOW_FACTOR * spec.max_text_chars + 64]):
        raise DecodeError(Reason.BAD_ENCODING, "undecodable or binary content, not text")
    text = clean_text(text, spec.max_text_chars)
    if not text:
        raise DecodeError(Reason.EMPTY, "no text left after cleaning")
    return text
