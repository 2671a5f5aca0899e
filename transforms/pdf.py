"""PDF bytes to page records: each page rendered to a fixed-size RGB part plus its text layer.

PDFium is not thread-safe, so every call into it is serialized by a process-wide lock
(Beam workers run bundles on several threads). Pages are rendered only over their
centered square, the same region `decode_image`'s center crop keeps, so a page with an
extreme aspect ratio never needs a huge bitmap; the render then goes through
`image.fit_part`, so pages are resized exactly like images.
"""

from __future__ import annotations

import math
import threading

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from loom.schemas.records import Modality, Reason, empty_part
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.image import fit_part
from loom.transforms.sniff import DecodeError
from loom.transforms.text import clean_text
from PIL import Image

PDF_MIME = "application/pdf"
_LOCK = threading.RLock()  # PDFium keeps global state: one caller at a time per process


def _looks_truncated(data: bytes) -> bool:
    """A PDF whose end-of-file marker is missing from its tail was most likely cut short."""
    return data.startswith(b"%PDF-") and b"%%EOF" not in data[-2048:]


def _open(data: bytes) -> pdfium.PdfDocument:
    # Loaded through the raw API: PdfDocument(bytes) reports a zero-page document as a
    # load failure with a stale FPDF_GetLastError() code (e.g. "incorrect password").
    # PDFium reads `data` lazily: the caller keeps it alive until the document is closed.
    raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
    if not raw:
        err = pdfium_c.FPDF_GetLastError()
        if err in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            what = "password-protected" if err == pdfium_c.FPDF_ERR_PASSWORD else \
                "encrypted with an unsupported security handler"
            raise DecodeError(Reason.ENCRYPTED, f"PDF is {what}")
        if _looks_truncated(data):
            raise DecodeError(Reason.TRUNCATED, "PDF is truncated (no %%EOF at its end)")
        detail = {pdfium_c.FPDF_ERR_FORMAT: "not a valid PDF",
                  pdfium_c.FPDF_ERR_FILE: "unreadable PDF"}.get(err, f"PDFium error {err}")
        raise DecodeError(Reason.DECODE_ERROR, detail)
    return pdfium.PdfDocument(raw)


def _render_square(page: pdfium.PdfPage, spec: PreprocessingSpec, index: int) -> Image.Image:
    """The page's centered square rendered with a shorter side of >= image_size."""
    w, h = page.get_size()
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise DecodeError(Reason.DECODE_ERROR, f"page {index} has no area ({w}x{h} pt)")
    # Cap the bitmap at max_image_pixels; decode_image then upsamples to image_size.
    target = min(spec.image_size, max(1, math.isqrt(spec.max_image_pixels) - 1))
    short = min(w, h)
    scale = target / short
    # render() applies ceil(crop * scale) per side: ask for floor(excess * scale) pixels
    # so the kept side never drops under `target`.
    ex_w = math.floor((w - short) / 2 * scale)
    ex_h = math.floor((h - short) / 2 * scale)
    cw = max(0.0, ex_w - 1e-6) / scale
    ch = max(0.0, ex_h - 1e-6) / scale
    bitmap = page.render(scale=scale, crop=(cw, ch, cw, ch), rev_byteorder=True,
                         may_draw_forms=False)
    try:
        if bitmap.width * bitmap.height > spec.max_image_pixels:  # pragma: no cover - guard
            raise DecodeError(Reason.TOO_LARGE, f"page {index} render of "
                              f"{bitmap.width}x{bitmap.height} exceeds max_image_pixels")
        img = bitmap.to_pil().convert("RGB")  # copies out of the PDFium buffer
    finally:
        bitmap.close()
    return img


def _read_page(doc: pdfium.PdfDocument, i: int, spec: PreprocessingSpec,
               data: bytes) -> tuple[Image.Image, str]:
    """(the page's centered square, raw text layer); PDFium lock held."""
    try:
        page = doc[i]
    except pdfium.PdfiumError as e:
        reason = Reason.TRUNCATED if _looks_truncated(data) else Reason.DECODE_ERROR
        raise DecodeError(reason, f"page {i} cannot be loaded: {e}") from None
    try:
        png = _render_square(page, spec, i)
        textpage = page.get_textpage()
        try:
            raw_text = textpage.get_text_range()
        finally:
            textpage.close()
    except pdfium.PdfiumError as e:
        raise DecodeError(Reason.DECODE_ERROR, f"page {i}: {e}") from None
    finally:
        page.close()
    return png, raw_text


def _page_record(png: Image.Image, raw_text: str, i: int, n: int, spec: PreprocessingSpec,
                 doc_id: str) -> dict:
    image = fit_part(png, spec, Modality.PAGE.value)
    image.update(mime=PDF_MIME)
    parts = [image]
    text = clean_text(raw_text, spec.max_text_chars)
    if text:
        part = empty_part(Modality.TEXT.value)
        part["text"] = text
        parts.append(part)
    return {"page": i, "parts": parts,
            "metadata": {"document_id": doc_id, "page": i, "pages": n}}


def decode_pdf(data: bytes, spec: PreprocessingSpec, doc_id: str) -> tuple[list[dict], int]:
    """(page records of the first `pdf_max_pages` pages, total page count).

    A page record is {"page": i, "parts": [page image part, text part if any],
    "metadata": {"document_id", "page", "pages"}}. Raises DecodeError: empty,
    encrypted, truncated or decode_error.
    """
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    with _LOCK:
        doc = _open(data)
        try:
            n = len(doc)
            if n < 1:
                raise DecodeError(Reason.EMPTY, "PDF has no pages")
            rendered = [_read_page(doc, i, spec, data) for i in range(min(n, spec.pdf_max_pages))]
        finally:
            doc.close()
    return [_page_record(png, text, i, n, spec, doc_id)
            for i, (png, text) in enumerate(rendered)], n
