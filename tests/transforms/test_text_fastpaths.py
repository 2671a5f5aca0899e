"""The text cleaner's regex and counting forms give what the per-character forms gave.

`_controls`, `_garbage` and `_clean` decide which files are rejected and which text is
tokenized; their faster forms are checked against the first (per-character) ones on
inputs built from the characters each rule is about, and `decode_text` end to end on
bytes that take the UTF-8 fast path or miss it.
"""

from __future__ import annotations

import random
import re
import unicodedata

import loom.transforms.text as text_mod
import pytest
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.sniff import DecodeError
from loom.transforms.text import _DROPPED, _clean, _controls, _garbage, decode_text

_KEEP = {"\n", "\t"}
_BAD = {"Cc", "Co", "Cn", "Cs"}
_HSPACE = re.compile(r"[^\S\n]+")


def _controls_reference(text: str) -> bool:
    n = sum(1 for c in text if c < " " and c not in "\t\n\r\x0b\x0c\x1b")
    return n > 0.01 * len(text)


def _garbage_reference(text: str) -> bool:
    if not text:
        return False
    bad = sum(1 for c in text if c == "\ufffd" or (
        c not in _KEEP and c != "\r" and unicodedata.category(c) in _BAD))
    return bad / len(text) > 0.10


def _clean_reference(text: str) -> str:
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _DROPPED.sub("", text)
    text = _HSPACE.sub(lambda m: "\t" if "\t" in m.group() else " ", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# every C0 control, whitespace of each kind, BOM, NUL, surrogates, private use,
# unassigned, U+FFFD, combining marks, letters
_POOL = ([chr(i) for i in range(0x20)] + [" ", "\x7f", "\x85", "\xa0", "\u1680", "\u2000",
         "\u2028", "\u2029", "\u3000", "\ufeff", "\u200b", "\ud800", "\ue000", "\U000f0001",
         "\u0378", "\U000e0080", "\ufffd", "\u0301", "e", "é", "Ã", "©", "日", "😀", "a", "Z"]
         + ["a", "b", " ", " ", "\n", "\t"] * 4)


def _samples() -> list[str]:
    rng = random.Random(11)
    out = ["", " ", "\t", " \t ", "a \t b", "a  b", "a\u3000\u3000b", "a \xa0 b", "\x1c\x1d",
           "line\r\nline\rline\n\n\n\nend", "\ufeffBOM text", "nul\x00in\x00side",
           "Ã©tÃ© Ã  la plage", "e\u0301", "\t\t\tx\t \t", "x" * 10 + "\x01"]
    for n in (5, 40, 200, 2000):
        out += ["".join(rng.choice(_POOL) for _ in range(n)) for _ in range(60)]
    return out


def test_controls_and_garbage_as_per_character():
    for text in _samples():
        assert _controls(text) == _controls_reference(text), repr(text[:60])
        assert _garbage(text) == _garbage_reference(text), repr(text[:60])


def test_clean_as_per_character():
    for text in _samples():
        assert _clean(text) == _clean_reference(text), repr(text[:60])


_TRICKY = [
    b"\xef\xbb\xbfBOM then text \r\n and CRLF\r\n",
    b"\xff\xfe" + "UTF-16 with a BOM\tand tab".encode("utf-16-le"),
    b"nul\x00bytes\x00inside a text " * 5,
    b"mixed\r\nnew\rlines\n\n\n\nand   runs \t of\x0b\x0cspace",
    "Ã©tÃ© Ã  la plage, latin-1 read as UTF-8 ".encode() * 3,
    "été à la plage, vraiment latin-1 ".encode("latin-1") * 3,
    "cafe\u0301 in NFD, zero\u200bwidth, nbsp\xa0here".encode(),
    b"\x1b[31mANSI escapes\x1b[0m stay as text " * 4,
    b"ctrl \x01\x02\x03\x04 heavy " * 10,
    "Привет мир, это проверка кодировки ".encode("cp1251") * 4,
]


@pytest.mark.parametrize("data", _TRICKY)
def test_decode_text_as_per_character(data, monkeypatch):
    """decode_text's result (or its rejection) as with the per-character helpers."""
    spec = PreprocessingSpec()

    def run() -> str:
        try:
            return decode_text(data, spec)
        except DecodeError as e:
            return f"rejected {e.reason.value}: {e.message}"

    got = run()
    for name, ref in (("_controls", _controls_reference), ("_garbage", _garbage_reference),
                      ("_clean", _clean_reference)):
        monkeypatch.setattr(text_mod, name, ref)
    assert got == run()


def test_strict_utf8_as_the_incremental_decoder():
    """_strict's plain bytes.decode for whole UTF-8 input: what the incremental decoder gives."""
    import codecs

    from loom.transforms.text import _strict

    cases = [b"", b"plain", "été 日本 😀".encode(), b"\xef\xbb\xbfbom", b"cut \xe6\x97",
             b"bad \xff here", b"\xed\xa0\x80 surrogate", b"nul\x00", b"\xc0\xaf overlong"]
    for data in cases:
        for final in (True, False):
            try:
                want = codecs.getincrementaldecoder("utf-8")(errors="strict").decode(
                    data, final=final)
            except UnicodeDecodeError:
                want = None
            assert _strict(data, "utf-8", final) == want, (data, final)
