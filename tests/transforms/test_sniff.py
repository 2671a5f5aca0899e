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
