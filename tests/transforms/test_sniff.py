from __future__ import annotations

import pathlib
import random

import pytest
from PIL import Image

from loom.schemas.records import Modality
from tests.transforms.helpers import encode
from loom.transforms.sniff import sniff

IMG = Image.new("RGB", (8, 8), (1, 2, 3))
I, A, V = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO
CASES = [
    (encode(IMG, "PNG"), "x.txt", I, "image/png"),  # content wins over the name
    (encode(IMG, "JPEG"), "x", I, "image/jpeg"),
    (encode(IMG, "GIF"), "x", I, "image/gif"),
    (encode(IMG, "WEBP"), "x", I, "image/webp"),
    (encode(IMG, "BMP"), "x", I, "image/bmp"),
    (encode(IMG, "TIFF"), "x", I, "image/tiff"),
    (b"%PDF-1.7\n...", "x", Modality.PAGE, "application/pdf"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt ", "x", A, "audio/wav"),
    (b"fLaC\x00\x00\x00\x22", "x", A, "audio/flac"),
    (b"OggS\x00\x02" + b"\x00" * 20, "x", A, "audio/ogg"),
    (b"ID3\x04\x00\x00\x00\x00\x00\x00", "x", A, "audio/mpeg"),
    (b"\xff\xfb\x90\x64" + b"\x00" * 20, "x", A, "audio/mpeg"),
    (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00", "x", A, "audio/mp4"),
    (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "x", V, "video/mp4"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "x", V, "video/webm"),
    (b"\x1a\x45\xdf\xa3\xa3\x42\x86\x81\x01\x42\x82\x88matroska", "x", V, "video/x-matroska"),
    ("héllo wörld".encode(), "x.bin", Modality.TEXT, "text/plain"),
    ("héllo wörld".encode("cp1252"), "x", Modality.TEXT, "text/plain"),
    ("hello".encode("utf-16"), "x", Modality.TEXT, "text/plain"),
    (random.Random(0).randbytes(512), "x.bin", None, None),
    (random.Random(0).randbytes(512), "x.jpg", I, "image/jpeg"),  # the name: last hint
    (b"", "x", None, None),
]


@pytest.mark.parametrize("data,uri,modality,mime", CASES)
def test_sniff(data, uri, modality, mime):
    assert sniff(data, uri) == (modality, mime)


def test_transforms_never_import_an_engine():
    root = pathlib.Path(__file__).resolve().parents[2] / "transforms"
    for path in root.glob("*.py"):
        src = path.read_text()
        assert "apache_beam" not in src and "import ray" not in src, path


MORE_MAGIC = [
    (b"GIF87a\x01\x00", I, "image/gif"),
    (b"MM\x00*\x00\x00\x00\x08", I, "image/tiff"),
    (b"II*\x00\x08\x00\x00\x00", I, "image/tiff"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", V, "video/x-msvideo"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", I, "image/webp"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00", I, "image/avif"),
    (b"\x00\x00\x00\x1cftypavis\x00\x00", I, "image/avif"),
    (b"\x00\x00\x00\x1cftypheic\x00\x00", I, "image/heic"),
    (b"\x00\x00\x00\x1cftypheix\x00\x00", I, "image/heic"),
    (b"\x00\x00\x00\x1cftypmif1\x00\x00", I, "image/heif"),
    (b"\x00\x00\x00\x1cftypqt  \x00\x00", V, "video/quicktime"),
    (b"\x00\x00\x00\x1cftypM4B \x00\x00", A, "audio/mp4"),
    (b"\xff\xe2\x00", A, "audio/mpeg"),  # the lowest frame sync: 0xE2 after masking
    (b"\xff\xf3\x00", A, "audio/mpeg"),
]


@pytest.mark.parametrize("data,modality,mime", MORE_MAGIC)
def test_more_magic(data, modality, mime):
    assert sniff(data + b"\x80" * 40, "x") == (modality, mime)


@pytest.mark.parametrize("data", [
    b"\xff\xe0\x00" + b"\x80" * 40,  # not a frame sync (bit 1 clear)
    b"\xff\xe4\x00" + b"\x80" * 40,  # mask 0xE6 leaves 0xE4
    b"RIFF\x00\x00\x00\x00XXXX" + b"\x80" * 40,  # RIFF of an unknown form
    b"\x00RIFF\x00\x00\x00WAVE" + b"\x80" * 40,  # magic not at offset 0
])
def test_near_misses_are_not_media(data):
    assert sniff(data, "x") == (None, None)


def test_an_mpeg_frame_needs_three_bytes():
    assert sniff(b"\xff\xfb\x00", "x") == (A, "audio/mpeg")
    assert sniff(b"\xff\xfb", "x")[0] is not A


def test_ebml_doctype_decides_webm_within_64_bytes():
    head = b"\x1a\x45\xdf\xa3"
    assert sniff(head + b"\x80" * 56 + b"webm", "x") == (V, "video/webm")  # ends at byte 64
    assert sniff(head + b"\x80" * 57 + b"webm", "x") == (V, "video/x-matroska")


def test_utf16_without_bom():
    assert sniff("plain ascii text".encode("utf-16-le"), "x") == (Modality.TEXT, "text/plain")
    assert sniff("plain ascii text".encode("utf-16-be"), "x") == (Modality.TEXT, "text/plain")
    assert sniff(b"a\x00b", "x") == (None, None)  # under 4 bytes: not UTF-16, has a NUL
    # NULs on both parities: binary, not UTF-16
    assert sniff(b"a\x00\x00b" * 20, "x") == (None, None)


def test_utf16_parity_thresholds():
    # 10 code units: odd bytes all NUL (1.0 > 0.4); one NUL among the 10 even bytes is 0.1,
    # over the 0.05 limit, so not UTF-16 (and a NUL: binary).
    assert sniff(b"a\x00" * 9 + b"\x00\x00", "x") == (None, None)
    # 25 units with one even NUL: 0.04 < 0.05, so UTF-16.
    assert sniff(b"a\x00" * 24 + b"\x00\x00", "x") == (Modality.TEXT, "text/plain")
    # odd NULs at exactly 0.4 (4 of 10) is not over 0.4
    odd4 = b"".join(b"a\x00" if i < 4 else b"ab" for i in range(10))
    assert sniff(odd4, "x") == (None, None)
    odd5 = b"".join(b"a\x00" if i < 5 else b"ab" for i in range(10))
    assert sniff(odd5, "x") == (Modality.TEXT, "text/plain")
    # the same, big-endian (NULs on the even bytes)
    assert sniff(b"\x00a" * 24 + b"\x00\x00", "x") == (Modality.TEXT, "text/plain")
    even4 = b"".join(b"\x00a" if i < 4 else b"ab" for i in range(10))
    assert sniff(even4, "x") == (None, None)


def test_a_multibyte_char_cut_by_the_8k_window_is_still_text():
    data = b"a" * 8191 + "é".encode()  # the window ends inside the 2-byte char
    assert sniff(data, "x") == (Modality.TEXT, "text/plain")
    data = b"a" * 8189 + "€".encode()  # 3 bytes: the window keeps 3 of them
    assert sniff(data, "x") == (Modality.TEXT, "text/plain")
    early = b"\x80" + b"\x01" * 100 + b"a" * 8000  # invalid early, many controls: not text
    assert sniff(early, "x") == (None, None)


@pytest.mark.parametrize(("printable", "high", "controls", "text"), [
    (701, 299, 0, True),  # 70.1% printable
    (700, 300, 0, False),  # exactly 70%: not more than 0.7
    (991, 0, 9, True),  # 0.9% controls (plus one invalid byte below)
    (990, 0, 10, False),  # 1% controls: not under 0.01
])
def test_legacy_text_thresholds(printable, high, controls, text):
    # Not UTF-8 (a lone 0x80-0xFF byte), no NUL: decided by the byte ratios.
    body = b"a" * printable + bytes([0xE9]) * high + b"\x01" * controls
    if not high:
        body = b"\xe9" + body[1:]
    want = (Modality.TEXT, "text/plain") if text else (None, None)
    assert sniff(body, "x") == want


def test_tab_newline_escape_count_as_text():
    # (a leading 0xE9: not UTF-8, so the byte ratios decide)
    body = b"\xe9" + ("word " * 50).encode() + b"\t\n\r\x0c\x0b\x1b" * 20
    assert sniff(body, "x") == (Modality.TEXT, "text/plain")
    assert sniff(b"\xe9" + b"\x7f" * 20 + b"a" * 980, "x") == (None, None)  # DEL is control


@pytest.mark.parametrize(("uri", "want"), [
    ("gs://b/doc.pdf", (Modality.PAGE, "application/pdf")),
    ("a/song.wav", (A, "audio/x-wav")),
    ("clip.mp4", (V, "video/mp4")),
    ("notes.txt", (Modality.TEXT, "text/plain")),
    ("bundle.zip", (None, None)),
    ("", (None, None)),
    ("dir.png/noext", (None, None)),  # only the base name counts
])
def test_the_extension_is_the_last_hint(uri, want):
    noise = random.Random(0).randbytes(512)
    assert sniff(noise, uri) == want


def test_decode_error_carries_a_reason():
    from loom.schemas.records import Reason
    from loom.transforms.sniff import DecodeError

    e = DecodeError("truncated", "ends early")
    assert e.reason is Reason.TRUNCATED and e.message == "ends early" and str(e) == "ends early"
    with pytest.raises(ValueError):
        DecodeError("no-such-reason", "x")
