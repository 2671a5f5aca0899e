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
import re
import unicodedata
from collections import Counter

from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.language import placement
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
# Below SHORT_BYTES, two readings placed about as well (within SHORT_MARGIN) are a
# guess between them: bad_encoding rather than a coin toss into mojibake.
SHORT_BYTES, SHORT_MARGIN = 256, 1.25
VARIANT_TIE = 1.03  # readings this close that differ in a few characters: a tie
# Legacy codecs by how much text is written in them (Python's canonical names): breaks
# near-ties between readings that differ in a few characters only.
_COMMON = ("cp1252", "iso8859-1", "cp1251", "cp1250", "shift_jis", "cp932", "gb18030",
           "gbk", "big5", "cp949", "euc_kr", "euc_jp", "koi8-r", "iso8859-2", "cp1253",
           "cp1254", "cp1256", "cp1255", "cp874", "iso8859-15")  # no linguistic content / undetermined
_KEEP = {"\n", "\t"}
_BAD_CATEGORIES = {"Cc", "Co", "Cn", "Cs"}
# A run of horizontal whitespace becomes one tab if it holds a tab, else one space: two
# substitutions by plain strings (a Python callback per run cost ~0.3 us a word), the
# second leaving alone the runs that are one space already.
_HSPACE_TAB = re.compile(r"[^\S\n]*\t[^\S\n]*")
_HSPACE_OTHER = re.compile(r"[^\S\n\t]{2,}|[^\S\n\t ]")
_BLANK_LINES = re.compile(r"\n{3,}")
# Cleaning looks at this many characters per character kept, at most.
_WINDOW_FACTOR, _MAX_WINDOW_FACTOR = 2, 32


# Characters _clean drops: categories Cc, Cs and Co (ranges fixed by Unicode's stability
# policy) but \n and \t, and BOM / zero-width space. One regex pass instead of a
# category lookup per character (4x the cost of the rest of ingest for a short text).
_DROPPED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff"
                      "\U000f0000-\U000ffffd\U00100000-\U0010fffd\ufeff\u200b]")
_ASCII_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # Cc but \t \n \r
_C0_CONTROLS = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f]")  # C0 but \t \n \v \f \r ESC


def _garbage(text: str) -> bool:
    if not text:
        return False
    if text.isascii():  # no Cn, Co, Cs or U+FFFD in ASCII: its Cc are all there is
        bad = len(_ASCII_BAD.findall(text))
    else:  # each distinct character looked up once, counted in C
        bad = sum(n for c, n in Counter(text).items() if c == "\ufffd" or (
            c not in _KEEP and c != "\r" and unicodedata.category(c) in _BAD_CATEGORIES))
    return bad / len(text) > 0.10


def _controls(text: str) -> bool:
    """More than 1% C0 control characters other than whitespace and ESC."""
    return len(_C0_CONTROLS.findall(text)) > 0.01 * len(text)


def _strict(data: bytes, codec: str, final: bool) -> str | None:
    """`data` decoded strictly (a cut multi-byte tail tolerated unless final), or None."""
    try:
        if final and codec == "utf-8":  # the common case, without a decoder object
            return data.decode("utf-8")
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
    scored: dict[str, tuple[float, str]] = {}  # decoded text -> (score, codec)
    tried = []
    for codec, coherence in _candidates(sample):
        text = _strict(sample, codec, final)
        if text is None or not text.strip() or _garbage(text) or text in scored:
            continue
        lang, score = placement(text)
        tried.append(f"{codec}:{lang}")
        if score > 0:  # the detector's coherence only breaks near-ties
            scored[text] = (score + 0.01 * coherence, codec)
    ranked = sorted(((v[0], v[1], t) for t, v in scored.items()), reverse=True)
    if not ranked:
        how = f" (no language in {', '.join(tried[:6])})" if tried else ""
        raise DecodeError(Reason.BAD_ENCODING, f"no codec decodes it as text in a language{how}")
    top = ranked[0]
    for other in ranked[1:]:  # a near-tie between single-byte variants: the common one
        if top[0] < VARIANT_TIE * other[0] and len(top[2]) == len(other[2]) == len(sample) \
                and _differ(top[2], other[2]) <= 0.3 \
                and _commonness(other[1]) < _commonness(top[1]):
            top = other
    if len(sample) < SHORT_BYTES:
        for other in ranked[1:]:
            if top[0] >= SHORT_MARGIN * other[0]:
                break
            if _differ(top[2], other[2]) > 0.3:  # another reading, not a code-page variant
                raise DecodeError(Reason.BAD_ENCODING, f"too short to tell {top[1]} from "
                                  f"{other[1]}: both read as text in a language")
    return top[1]


def _commonness(codec: str) -> int:
    """Rank of a codec among those most used for legacy text (lower: more common)."""
    name = codecs.lookup(codec).name
    return _COMMON.index(name) if name in _COMMON else len(_COMMON)


def _differ(a: str, b: str) -> float:
    """Share of characters two readings of the same bytes disagree on (1.0: unaligned)."""
    if len(a) != len(b):
        return 1.0
    return sum(x != y for x, y in zip(a, b, strict=True)) / (len(a) or 1)


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
    text = _DROPPED.sub("", text)
    if "\t" in text:
        text = _HSPACE_TAB.sub("\t", text)
    text = _HSPACE_OTHER.sub(" ", text)
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
