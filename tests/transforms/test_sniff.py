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


# --- issue 22 (mutation survivors of transforms/sniff.py): the compressed-stream magics,
# the magic-less containers (MPEG-TS, M2TS, DV, AIFF, RF64), BOM-less UTF-16/32, the
# sample-window edge and the control-byte share that tells a code page from binary data.

def _noise(n: int, seed: int = 1) -> bytearray:
    """Random bytes without 0x47 (the TS sync byte), so only planted syncs count."""
    return bytearray(b if b != 0x47 else 0x48 for b in random.Random(seed).randbytes(n))


@pytest.mark.parametrize(("data", "mime"), [
    (b"\x1f\x8b\x08\x00", "application/gzip"),
    (b"\xfd7zXZ\x00\x00", "application/x-xz"),
    (b"\x28\xb5\x2f\xfd\x04", "application/zstd"),
    (b"BZh91AY&SY", "application/x-bzip2"),
])
def test_compressed_streams_are_named_not_read(data, mime):
    from loom.transforms.sniff import compression, looks_like_text

    assert compression(data) == mime
    assert sniff(data, "x.txt") == (None, mime)
    assert not looks_like_text(data)


def test_bzh_without_a_block_size_digit_is_text():
    from loom.transforms.sniff import compression

    assert compression(b"BZh") is None and compression(b"BZhello") is None
    assert sniff(b"BZh is how the bzip2 header starts", "x") == (Modality.TEXT, "text/plain")


@pytest.mark.parametrize(("start", "step"), [(0, 188), (4, 192)])
def test_mpeg_ts_needs_three_agreeing_packets(start, step):
    data = _noise(3 * step + 10)
    for i in range(3):
        data[start + i * step] = 0x47
    assert sniff(bytes(data), "x") == (V, "video/mp2t")
    data[start + 2 * step] = 0x00  # the third packet disagrees
    assert sniff(bytes(data), "x") != (V, "video/mp2t")


def test_mpeg_ts_shorter_than_three_packets():
    two = _noise(200)
    two[0] = two[188] = 0x47  # every packet of the sample: 0 and 188
    assert sniff(bytes(two), "x") == (V, "video/mp2t")
    one = _noise(188)
    one[0] = 0x47  # one packet proves nothing
    assert sniff(bytes(one), "x") == (None, None)


def test_dv_header_block():
    noise = bytes(_noise(60))
    assert sniff(b"\x1f\x07\x00\x3f" + noise, "x") == (V, "video/dv")
    assert sniff(b"\x1f\x07\x00\xbf" + noise, "x") == (V, "video/dv")  # top bit ignored
    assert sniff(b"\x1f\x07\x00\x3e" + noise, "x") != (V, "video/dv")
    assert sniff(b"\x1f\x07\x01\x3f" + noise, "x") != (V, "video/dv")
    assert sniff(b"\x1f\x07\x00", "x") != (V, "video/dv")


@pytest.mark.parametrize(("data", "want"), [
    (b"FORM\x00\x00\x00\x10AIFFCOMM", (A, "audio/aiff")),
    (b"FORM\x00\x00\x00\x10AIFCFVER", (A, "audio/aiff")),
    (b"FORM\x00\x00\x00\x10ILBMBMHD", (None, None)),  # an Amiga picture: not AIFF
    (b"RF64\xff\xff\xff\xffWAVEds64", (A, "audio/wav")),
    (b"RIFF\x00\x00\x00\x00CDXAfmt ", (None, None)),
])
def test_form_and_riff_by_their_form_type(data, want):
    assert sniff(data + bytes(_noise(40)), "x") == want


def test_bomless_utf16_and_utf32_are_text():
    from loom.transforms.sniff import looks_utf32

    for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        assert sniff("hello, world".encode(codec), "x") == (Modality.TEXT, "text/plain"), codec
    assert looks_utf32("hi there".encode("utf-32-le")) == "utf-32-le"
    assert looks_utf32("hi there".encode("utf-32-be")) == "utf-32-be"
    assert looks_utf32("hi there".encode("utf-32-le") + b"ab") == "utf-32-le"  # whole units
    assert looks_utf32("h".encode("utf-32-le")) is None  # under 2 units
    assert looks_utf32(b"\x01\x00\x11\x00" * 4) is None  # 0x110001: not a code point
    assert looks_utf32("hi there".encode("utf-16-le")) is None


def test_short_utf16_samples():
    from loom.transforms.sniff import looks_like_text

    assert looks_like_text("ab".encode("utf-16-le"))  # 4 bytes: NULs on one side
    assert not looks_like_text(b"a\x00b")  # 3 bytes: too short to tell
    assert looks_like_text(b"a\x00" * 9 + b"\x00b")


def test_bomless_utf16_of_a_non_latin_script():
    from loom.transforms.sniff import looks_utf16_wide

    text = "Привет, мир! Как у тебя дела сегодня?"
    assert looks_utf16_wide(text.encode("utf-16-le")) == "utf-16-le"
    assert looks_utf16_wide(text.encode("utf-16-be")) == "utf-16-be"
    assert sniff(text.encode("utf-16-le"), "x") == (Modality.TEXT, "text/plain")
    assert looks_utf16_wide(text[:7].encode("utf-16-le")) is None  # 14 bytes: too short
    assert looks_utf16_wide(bytes(_noise(512))) is None
    kana = "こんにちは、世界。今日はいい天気ですね。"
    assert looks_utf16_wide(kana.encode("utf-16-le")) == "utf-16-le"


def test_a_character_cut_by_the_sample_window_is_still_text():
    from loom.transforms.sniff import looks_like_text

    def binary(n: int) -> bytes:  # valid UTF-8; a fifth of it control bytes
        rng = random.Random(2)
        return bytes(rng.randrange(1, 0x7F) for _ in range(n))

    assert looks_like_text(binary(8191) + "ж".encode())  # the window ends inside ж
    assert looks_like_text(binary(8190) + "日".encode())  # 3-byte char, 2 bytes in
    assert looks_like_text(binary(101) + b"\xffab")  # broken in the last 3 bytes: cut
    assert not looks_like_text(binary(100) + b"\xffabc")  # 4 from the end: broken


def test_a_code_page_is_text_unless_control_bytes_pass_one_percent():
    from loom.transforms.sniff import looks_like_text

    body = ("Съешь же ещё этих мягких французских булок, да выпей чаю. " * 20)[:1000]
    cp = body.encode("cp1251")
    assert len(cp) == 1000 and looks_like_text(cp)
    nine = bytearray(cp)
    for i in range(9):
        nine[100 * i + 5] = 0x01  # 0.9% control bytes
    assert looks_like_text(bytes(nine))
    ten = bytearray(nine)
    ten[955] = 0x7F  # DEL is a control byte too: 1.0%
    assert not looks_like_text(bytes(ten))
    tabs = bytearray(cp)
    for i in range(50):
        tabs[20 * i + 3] = 0x09  # tabs, newlines, form feeds, ESC are text
    assert looks_like_text(bytes(tabs))


def test_messages_lose_object_addresses():
    from loom.transforms.sniff import DecodeError, stable_message

    raw = "cannot identify image file <_io.BytesIO object at 0x7f3A2b9c0d10>"
    assert stable_message(raw) == "cannot identify image file <_io.BytesIO>"
    assert DecodeError("decode_error", raw).message == "cannot identify image file <_io.BytesIO>"
    assert stable_message("<not an object at all>") == "<not an object at all>"


def _ascii_noise(n: int) -> bytes:
    """Valid UTF-8 (bytes 1-126) that is not prose: a fifth control bytes, no NUL."""
    rng = random.Random(2)
    return bytes(rng.randrange(1, 0x7F) for _ in range(n))


def test_an_empty_bzip2_stream_and_a_four_byte_dv_header():
    import bz2

    from loom.transforms.sniff import compression

    assert compression(bz2.compress(b"")) == "application/x-bzip2"  # BZh9 then 0x17
    assert sniff(b"\x1f\x07\x00\x3f", "x") == (V, "video/dv")


def test_nul_parity_of_ascii_utf16():
    from loom.transforms.sniff import _looks_utf16

    assert _looks_utf16("hello world".encode("utf-16-le"))
    assert _looks_utf16("hello world".encode("utf-16-be"))
    assert not _looks_utf16(b"\x00" * 8)  # NULs on both sides: not text
    # exactly 40% NULs on one side is not enough, 50% is
    assert not _looks_utf16(b"a\x00b\x00c\x00d\x00ezfzgzhzizjz")
    assert _looks_utf16(b"a\x00b\x00c\x00d\x00e\x00fzgzhzizjz")
    assert not _looks_utf16(b"\x00a\x00b\x00c\x00d" + b"zezfzgzhzizj")
    # one NUL in 20 on the other side (5%) is too many
    letters = b"abcdefghijklmnopqrs"
    assert not _looks_utf16(b"".join(bytes([c, 0]) for c in letters) + b"\x00\x00")
    assert not _looks_utf16(b"\x00\x00" + b"".join(bytes([0, c]) for c in letters))


def test_utf32_at_two_units_and_beyond_the_bmp():
    from loom.transforms.sniff import looks_utf32

    assert looks_utf32("hi".encode("utf-32-le")) == "utf-32-le"  # 8 bytes: two units
    assert looks_utf32("hi \U0001F600 there".encode("utf-32-be")) == "utf-32-be"
    # top bytes NUL both ways; only the big-endian reading is valid (U+12000, cuneiform)
    assert looks_utf32(b"\x00\x01\x20\x00" * 4) == "utf-32-be"


def test_utf16_wide_edges():
    from loom.transforms.sniff import looks_utf16_wide

    assert looks_utf16_wide("Приветик".encode("utf-16-le")) == "utf-16-le"  # 16 bytes
    kana = "こんにちは、世界。今日はいい天気ですね。"
    assert looks_utf16_wide(kana.encode("utf-16-be")) == "utf-16-be"
    # Kazakh Ә/ә in big-endian: the little-endian reading is broken surrogates
    assert looks_utf16_wide(("Әә Әә " * 5).encode("utf-16-be")) == "utf-16-be"
    # mostly control characters is not text, whatever its high bytes
    controls = "ab" + "".join(map(chr, [*range(1, 9), *range(0x0E, 0x1C)]))
    assert looks_utf16_wide(controls.encode("utf-16-le")) is None
    # exactly 95% printable is not enough
    nineteen = "ПриветмирКакделаВсё"[:19] + "\x07"
    assert looks_utf16_wide(nineteen.encode("utf-16-le")) is None


def test_looks_like_text_reads_only_the_first_8k_and_trusts_wide_utf16():
    from loom.transforms.sniff import looks_like_text

    assert looks_like_text(_ascii_noise(8192) + b"\x00")  # the NUL is past the window
    kazakh = ("ҚазақстанРеспубликасы" * 4).encode("utf-16-le")  # no NUL, not UTF-8
    assert b"\x00" not in kazakh and looks_like_text(kazakh)


def test_utf16_wide_needs_four_scripts_to_carry_sixty_percent():
    from loom.transforms.sniff import looks_utf16_wide

    singles = "कਕகకაᄀሀᐁ"  # 8 one-off scripts: Devanagari ... Canadian syllabics
    # four scripts with 3 letters each: 12 of 20 units (60%) is enough
    four = "αβγ" + "абв" + "աբգ" + "ابت" + singles
    assert looks_utf16_wide(four.encode("utf-16-le")) == "utf-16-le"
    # 3+3+3+2 of 20 (55%) is not, even though a fifth script brings it to 65%
    five = "αβγ" + "абв" + "աբգ" + "اب" + "กข" + singles[:7]
    assert len(five) == 20 and looks_utf16_wide(five.encode("utf-16-le")) is None
