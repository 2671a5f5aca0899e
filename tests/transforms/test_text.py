from __future__ import annotations

import random

import pytest
from loom.schemas.records import Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.sniff import DecodeError
from loom.transforms.text import decode_text

SPEC = PreprocessingSpec()
WESTERN = "Café naïve — “quotes” and façade, déjà vu: 5 €."


def test_utf8_and_bom():
    assert decode_text(WESTERN.encode(), SPEC) == WESTERN
    assert decode_text(b"\xef\xbb\xbf" + WESTERN.encode(), SPEC) == WESTERN


def test_cp1252():
    assert decode_text(WESTERN.encode("cp1252"), SPEC) == WESTERN


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_32(encoding):
    assert decode_text(WESTERN.encode(encoding), SPEC) == WESTERN


def test_multibyte_legacy_encoding():
    text = "これは日本語のテキストです。画像の説明文として使われます。" * 3
    assert decode_text(text.encode("shift_jis"), SPEC) == text


def test_nfc_controls_and_whitespace():
    raw = "Cafe\u0301\x07 is\x00   open\u200b.\r\n\r\n\r\n\r\nTabs\t\tstay\x1b.   \n"
    assert decode_text(raw.encode(), SPEC) == "Café is open.\n\nTabs\tstay."


def test_cap():
    spec = PreprocessingSpec(max_text_chars=16)
    out = decode_text(("word " * 100).encode(), spec)
    assert len(out) <= 16 and out.startswith("word word")


def test_empty():
    for data in (b"", b"   \n\t  ", "\u200b \u200b\n".encode()):
        with pytest.raises(DecodeError) as e:
            decode_text(data, SPEC)
        assert e.value.reason == Reason.EMPTY


def test_binary_garbage():
    data = random.Random(0).randbytes(4096)
    with pytest.raises(DecodeError) as e:
        decode_text(data, SPEC)
    assert e.value.reason == Reason.BAD_ENCODING
