from __future__ import annotations

import pathlib
import random

import pytest
from loom.schemas.records import Modality
from loom.transforms.sniff import sniff
from PIL import Image

from tests.transforms.helpers import encode

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


def test_an_mpeg_frame_needs_three_bytes():
    assert sniff(b"\xff\xfb\x00", "x") == (A, "audio/mpeg")
    assert sniff(b"\xff\xfb", "x")[0] is not A


def test_ebml_doctype_decides_webm_within_64_bytes():
    head = b"\x1a\x45\xdf\xa3"
    assert sniff(head + b"\x80" * 56 + b"webm", "x") == (V, "video/webm")  # ends at byte 64
    assert sniff(head + b"\x80" * 57 + b"webm", "x") == (V, "video/x-matroska")


@pytest.mark.parametrize(("uri", "want"), [
    ("gs://b/doc.pdf", (Modality.PAGE, "application/pdf")),
    ("a/song.wav", (A, "audio/x-wav")),
    ("clip.mp4", (V, "video/mp4")),
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
