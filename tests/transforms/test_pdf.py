"""PDF pages to page records; PDFs are written by hand here, no fixtures, no network."""

from __future__ import annotations

import numpy as np
import pytest
from loom.schemas.records import PART, Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.pdf import decode_pdf
from loom.transforms.pixels import part_frames
from loom.transforms.sniff import DecodeError


def make_pdf(pages: list[str], *, encrypt: bool = False,
             mediabox: tuple[float, ...] = (0, 0, 200, 100)) -> bytes:
    """A minimal valid PDF: one Helvetica text line per page, exact xref offsets.

    `encrypt` adds a Standard security handler whose /U entry matches no password, so
    the document cannot be opened without one.
    """
    n = len(pages)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            ("<< /Type /Pages /Kids [%s] /Count %d >>"
             % (" ".join(f"{4 + 2 * i} 0 R" for i in range(n)), n)).encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    box = " ".join(str(v) for v in mediabox)
    for i, text in enumerate(pages):
        content = f"BT /F1 12 Tf 10 50 Td ({text}) Tj ET".encode()
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [{box}] /Resources << /Font "
                    f"<< /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    if encrypt:
        objs.append(b"<< /Filter /Standard /V 1 /R 2 /O <" + b"11" * 32 + b"> /U <"
                    + b"22" * 32 + b"> /P -4 >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i + 1, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    trailer = f"<< /Size {len(objs) + 1} /Root 1 0 R"
    if encrypt:
        trailer += f" /Encrypt {len(objs)} 0 R /ID [<{'ab' * 16}> <{'ab' * 16}>]"
    out += f"trailer\n{trailer} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


SPEC = PreprocessingSpec(image_codec="raw")
THREE = make_pdf(["Hello first page", "Second page text", "Third one"])


def test_three_pages_render_and_text():
    pages, total = decode_pdf(THREE, SPEC, "doc1")
    assert total == 3 and [p["page"] for p in pages] == [0, 1, 2]
    s = SPEC.image_size
    texts = ["Hello first page", "Second page text", "Third one"]
    for i, rec in enumerate(pages):
        image, text = rec["parts"]
        assert set(image) == set(PART.names) and set(text) == set(PART.names)
        assert image["kind"] == "page" and image["mime"] == "application/pdf"
        assert (image["height"], image["width"], image["frames"]) == (s, s, 1)
        assert len(image["pixels"]) == s * s * 3
        px = np.frombuffer(image["pixels"], np.uint8)
        assert px.max() == 255 and px.min() < 128  # white page with dark glyphs
        assert text["kind"] == "text" and text["text"] == texts[i]
        assert rec["metadata"] == {"document_id": "doc1", "page": i, "pages": 3}


def test_page_cap_keeps_total():
    pages, total = decode_pdf(THREE, SPEC.model_copy(update={"pdf_max_pages": 2}), "d")
    assert len(pages) == 2 and total == 3


def test_blank_page_has_no_text_part():
    pages, _ = decode_pdf(make_pdf([""]), SPEC, "d")
    assert [p["kind"] for p in pages[0]["parts"]] == ["page"]


@pytest.mark.parametrize("box", [(0, 0, 14400, 14400), (0, 0, 14400, 1), (0, 0, 0.5, 0.5)])
def test_extreme_page_sizes_stay_fixed_size(box):
    spec = SPEC.model_copy(update={"image_size": 32})
    pages, _ = decode_pdf(make_pdf(["x"], mediabox=box), spec, "d")
    assert part_frames(pages[0]["parts"][0]).shape == (1, 32, 32, 3)


def test_pixel_budget_caps_the_render():
    spec = SPEC.model_copy(update={"max_image_pixels": 100})  # render <= 100 px, upsampled
    pages, _ = decode_pdf(THREE, spec, "d")
    assert part_frames(pages[0]["parts"][0]).shape == (1, spec.image_size, spec.image_size, 3)


def _reason(data: bytes) -> Reason:
    with pytest.raises(DecodeError) as e:
        decode_pdf(data, SPEC, "d")
    return e.value.reason


def test_encrypted():
    assert _reason(make_pdf(["secret"], encrypt=True)) == Reason.ENCRYPTED


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated(cut):
    assert _reason(THREE[: int(len(THREE) * cut)]) in (Reason.TRUNCATED, Reason.DECODE_ERROR)


def test_empty_bytes_and_zero_pages():
    assert _reason(b"") == Reason.EMPTY
    assert _reason(make_pdf([])) == Reason.EMPTY


def test_garbage_with_pdf_header():
    assert _reason(b"%PDF-1.7\n" + bytes(range(256)) * 8 + b"\n%%EOF\n") == Reason.DECODE_ERROR
    assert _reason(b"%PDF-") in (Reason.TRUNCATED, Reason.DECODE_ERROR)


def test_deterministic():
    a, _ = decode_pdf(THREE, SPEC, "d")
    b, _ = decode_pdf(THREE, SPEC, "d")
    assert a == b
