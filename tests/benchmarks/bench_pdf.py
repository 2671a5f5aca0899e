"""Benchmark: loom's `transforms.pdf.decode_pdf` vs bare pypdfium2 + Pillow, same run.

    .venv/bin/python tests/benchmarks/bench_pdf.py [--pages 20] [--calls 10] [--repeats 3]
        [--size 224]

One in-memory PDF (tests/transforms/test_pdf.py `make_pdf`: one Helvetica text line per
page, US Letter 612x792 pt). Each pass decodes it `--calls` times. The bare loop opens it
with `pdfium.PdfDocument(bytes)` and for every page renders the whole page at the scale
loom uses (shorter side -> size), takes the text layer (`get_text_range`), converts the
bitmap to an RGB PIL image and resizes + center-crops it with `ImageOps.fit` (bicubic).
Loom renders only the centered square, then round-trips it through PNG and
`decode_image`, cleans the text and builds page records. Prints pages/s and the ratio
loom/bare (< 1: loom is slower). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, ImageOps

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from loom.schemas.spec import PreprocessingSpec  # noqa: E402
from loom.transforms.pdf import decode_pdf  # noqa: E402
from loom.transforms.pixels import part_frames  # noqa: E402

from tests.transforms.test_pdf import make_pdf  # noqa: E402

LETTER = (0, 0, 612, 792)


def bare(data: bytes, size: int) -> list[tuple[bytes, str]]:
    doc = pdfium.PdfDocument(data)
    out = []
    try:
        for i in range(len(doc)):
            page = doc[i]
            w, h = page.get_size()
            bitmap = page.render(scale=size / min(w, h), rev_byteorder=True,
                                 may_draw_forms=False)
            textpage = page.get_textpage()
            text = textpage.get_text_range()
            textpage.close()
            img = bitmap.to_pil().convert("RGB")
            bitmap.close()
            page.close()
            fit = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
            buf = io.BytesIO()  # stored as loom stores it: JPEG q90
            fit.save(buf, "JPEG", quality=90)
            out.append((buf.getvalue(), text))
    finally:
        doc.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    spec = PreprocessingSpec(image_size=args.size)
    data = make_pdf([f"Page {i + 1} of the benchmark document, some words to extract"
                     for i in range(args.pages)], mediabox=LETTER)
    print(f"{args.pages}-page PDF ({len(data) / 1e3:.1f} kB, Letter) -> {args.size}x{args.size}"
          f" RGB + text per page; {args.calls} calls per pass, best of {args.repeats}")
    records, n = decode_pdf(data, spec, "bench")
    ref = bare(data, args.size)
    assert n == len(records) == len(ref) == args.pages
    diffs = [np.abs(part_frames(r["parts"][0])[0].astype(int)
                    - np.asarray(Image.open(io.BytesIO(px)))).mean()
             for r, (px, _) in zip(records, ref, strict=True)]
    same_text = all(r["parts"][1]["text"] == t.strip() for r, (_, t) in zip(records, ref, strict=True))
    print(f"  check: mean |pixel diff| loom vs bare {np.mean(diffs):.2f} (of 255), "
          f"text {'identical' if same_text else 'differs'}")
    paths = {"loom decode_pdf": lambda: decode_pdf(data, spec, "bench"),
             "bare pypdfium2": lambda: bare(data, args.size)}
    best = {k: 0.0 for k in paths}
    for _ in range(args.repeats):  # interleaved so drift hits every path alike
        for name, fn in paths.items():
            t = time.perf_counter()
            for _ in range(args.calls):
                fn()
            best[name] = max(best[name], args.calls * args.pages / (time.perf_counter() - t))
    for name, pps in best.items():
        print(f"{name:<16} {pps:8.1f} pages/s")
    print(f"ratio loom/bare  {best['loom decode_pdf'] / best['bare pypdfium2']:.2f}x")


if __name__ == "__main__":
    main()
