"""Interleaved manifest records: parsing, reference confinement, building, record ids."""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from loom.schemas.records import PART, Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.image import decode_image
from loom.transforms.pixels import part_frames
from loom.transforms.records import (
    RecordError,
    build_interleaved,
    parse_manifest,
    record_id,
    resolve_reference,
)
from loom.transforms.sniff import DecodeError
from PIL import Image

SPEC = PreprocessingSpec(image_codec="raw")  # exact colours
DECODERS = {"image": decode_image}


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path):
    """root/ds/{manifest, img/red.png, img/blue.png}; outside/secret.png beside root."""
    root = tmp_path / "root"
    (root / "ds" / "img").mkdir(parents=True)
    (root / "ds" / "img" / "red.png").write_bytes(_png((255, 0, 0)))
    (root / "ds" / "img" / "blue.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.png").write_bytes(_png((0, 255, 0)))
    return root


RECORDS = [
    {"id": "r0", "parts": [{"text": "A  red\tsquare:"}, {"image": "img/red.png"},
                           {"text": "then blue"}, {"image": "img/blue.png"}]},
    {"parts": [{"image": "./img/blue.png"}, {"text": "only blue"}]},
]


def _jsonl(records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def _parquet(records) -> bytes:
    part = pa.struct([(k, pa.string()) for k in ("text", "image", "audio", "video", "pdf")])
    table = pa.table({"id": [r.get("id") for r in records],
                      "parts": [r["parts"] for r in records]},
                     schema=pa.schema([("id", pa.string()), ("parts", pa.list_(part))]))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _rgb(part) -> tuple[int, int, int]:
    px = part_frames(part)
    return tuple(int(v) for v in px.reshape(-1, 3).mean(axis=0).round())


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_manifest_to_interleaved_in_order(tree, fmt):
    manifest = str(tree / "ds" / f"m.{fmt}")
    data = _jsonl(RECORDS) if fmt == "jsonl" else _parquet(RECORDS)
    recs = parse_manifest(data, fmt, manifest)
    assert [r["index"] for r in recs] == [0, 1] and recs[0]["id"] == "r0"
    assert recs[1]["id"] is None and recs[0]["parts"] == RECORDS[0]["parts"]

    ex = build_interleaved(recs[0], manifest, [str(tree)], SPEC, DECODERS)
    assert [p["kind"] for p in ex["parts"]] == ["text", "image", "text", "image"]
    assert all(set(p) == set(PART.names) for p in ex["parts"])
    assert ex["parts"][0]["text"] == "A red\tsquare:" and ex["parts"][2]["text"] == "then blue"
    assert _rgb(ex["parts"][1]) == (255, 0, 0) and _rgb(ex["parts"][3]) == (0, 0, 255)
    red, blue = (os.path.realpath(tree / "ds" / "img" / n) for n in ("red.png", "blue.png"))
    assert ex["source_uris"] == [f"{manifest}#0", red, blue]
    assert ex["parts"][1]["source_uri"] == red
    assert ex["id"] == record_id([("text", b"A  red\tsquare:"), ("image", _png((255, 0, 0))),
                                  ("text", b"then blue"), ("image", _png((0, 0, 255)))])
    assert ex["metadata"]["record_id"] == "r0"

    ex1 = build_interleaved(recs[1], manifest, [str(tree)], SPEC, DECODERS)
    assert [p["kind"] for p in ex1["parts"]] == ["image", "text"]
    assert ex1["source_uris"] == [f"{manifest}#1", blue]


def test_both_formats_give_the_same_examples(tree):
    manifest = str(tree / "ds" / "m")
    a = [build_interleaved(r, manifest, [str(tree)], SPEC, DECODERS)
         for r in parse_manifest(_jsonl(RECORDS), "jsonl", manifest)]
    b = [build_interleaved(r, manifest, [str(tree)], SPEC, DECODERS)
         for r in parse_manifest(_parquet(RECORDS), "parquet", manifest)]
    assert a == b


def test_parquet_parts_as_json_string(tree):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"parts": [json.dumps(RECORDS[1]["parts"]), "not json"]}), sink)
    recs = parse_manifest(sink.getvalue().to_pybytes(), "parquet", str(tree / "ds" / "m.pq"))
    assert recs[0]["parts"] == RECORDS[1]["parts"]
    assert isinstance(recs[1], RecordError) and recs[1].record_index == 1


def test_malformed_lines_are_record_errors(tree):
    lines = [json.dumps(RECORDS[0]).encode(), b"{not json", b"", b'{"parts": []}',
             b'{"parts": [{"text": "a", "image": "b.png"}]}', b'{"parts": [{"image": 3}]}',
             b"[1]", b'{"id": 7, "parts": [{"text": "x"}]}', b"\xff\xfe{}",
             json.dumps(RECORDS[1]).encode()]
    data = b"\n".join(lines)
    recs = parse_manifest(data, "jsonl", str(tree / "ds" / "m.jsonl"))
    good = [r for r in recs if isinstance(r, dict)]
    bad = [r for r in recs if isinstance(r, RecordError)]
    assert [r["index"] for r in good] == [0, 9]
    assert [e.record_index for e in bad] == [1, 3, 4, 5, 6, 7, 8]
    assert all(e.reason == Reason.BAD_RECORD for e in bad)
    assert "line 2" in bad[0].message


def test_whole_manifest_failures(tree):
    for data, fmt, reason in [(b"", "jsonl", Reason.EMPTY),
                              (b"PAR1garbage", "parquet", Reason.DECODE_ERROR),
                              (b"x", "csv", Reason.UNSUPPORTED_FORMAT)]:
        with pytest.raises(DecodeError) as e:
            parse_manifest(data, fmt, "m")
        assert e.value.reason == reason


def test_missing_reference_names_record_and_ref(tree):
    manifest = str(tree / "ds" / "m.jsonl")
    rec = parse_manifest(_jsonl([{"id": "r9", "parts": [{"text": "t"},
                                                        {"image": "img/nope.png"}]}]),
                         "jsonl", manifest)[0]
    with pytest.raises(DecodeError) as e:
        build_interleaved(rec, manifest, [str(tree)], SPEC, DECODERS)
    assert e.value.reason == Reason.MISSING_REFERENCE
    assert "r9" in e.value.message and "img/nope.png" in e.value.message


def test_decoder_errors_keep_their_reason(tree):
    (tree / "ds" / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    manifest = str(tree / "ds" / "m.jsonl")
    rec = {"index": 4, "parts": [{"image": "img/bad.png"}]}
    with pytest.raises(DecodeError) as e:
        build_interleaved(rec, manifest, [str(tree)], SPEC, DECODERS)
    assert e.value.reason == Reason.DECODE_ERROR and "record 4" in e.value.message
    with pytest.raises(DecodeError) as e:  # no decoder registered for the kind
        build_interleaved({"parts": [{"audio": "img/red.png"}]}, manifest, [str(tree)],
                          SPEC, DECODERS)
    assert e.value.reason == Reason.UNSUPPORTED_FORMAT


def test_list_returning_decoder_and_empty_text(tree):
    manifest = str(tree / "ds" / "m.jsonl")
    two = lambda data, spec: [decode_image(data, spec), decode_image(data, spec)]  # noqa: E731
    ex = build_interleaved({"parts": [{"text": " \u200b "}, {"pdf": "img/red.png"}]},
                           manifest, [str(tree)], SPEC, {"pdf": two})
    assert [p["kind"] for p in ex["parts"]] == ["image", "image"]
    with pytest.raises(DecodeError) as e:
        build_interleaved({"parts": [{"text": "\x00 \n"}]}, manifest, [str(tree)], SPEC, {})
    assert e.value.reason == Reason.EMPTY


@pytest.mark.parametrize("ref", [
    "../../etc/passwd", "../../../../../../../../etc/passwd", "/etc/passwd",
    "http://127.0.0.1:1/x.png", "https://example.com/x.png", "ftp://host/x.png",
    "data:image/png;base64,AAAA", "file:///etc/passwd", "file://host/tmp/x.png",
    "gs://bucket/x.png", "../../outside/secret.png", "img/../../../outside/secret.png",
])
def test_forbidden_references(tree, ref):
    manifest = str(tree / "ds" / "m.jsonl")
    with pytest.raises(DecodeError) as e:
        resolve_reference(ref, manifest, [str(tree)])
    assert e.value.reason == Reason.FORBIDDEN_REFERENCE


def test_forbidden_reference_in_a_record_names_it(tree):
    manifest = str(tree / "ds" / "m.jsonl")
    with pytest.raises(DecodeError) as e:
        build_interleaved({"id": "evil", "parts": [{"image": "/etc/passwd"}]}, manifest,
                          [str(tree)], SPEC, DECODERS)
    assert e.value.reason == Reason.FORBIDDEN_REFERENCE and "evil" in e.value.message


def test_symlink_escaping_root_is_forbidden(tree):
    outside = tree.parent / "outside"
    os.symlink(outside / "secret.png", tree / "ds" / "img" / "link.png")
    os.symlink(outside, tree / "ds" / "dirlink")
    os.symlink(tree / "ds" / "img" / "red.png", tree / "ds" / "inside.png")
    manifest = str(tree / "ds" / "m.jsonl")
    for ref in ("img/link.png", "dirlink/secret.png", f"file://{tree}/ds/img/link.png"):
        with pytest.raises(DecodeError) as e:
            resolve_reference(ref, manifest, [str(tree)])
        assert e.value.reason == Reason.FORBIDDEN_REFERENCE, ref
    # a symlink that stays inside the root is fine, and resolves to its target
    assert resolve_reference("inside.png", manifest, [str(tree)]) == \
        os.path.realpath(tree / "ds" / "img" / "red.png")


def test_allowed_local_references(tree):
    manifest = str(tree / "ds" / "m.jsonl")
    red = os.path.realpath(tree / "ds" / "img" / "red.png")
    for ref in ("img/red.png", "./img/../img/red.png", str(tree / "ds" / "img" / "red.png"),
                f"file://{tree}/ds/img/red.png", "../ds/img/red.png"):
        assert resolve_reference(ref, manifest, [str(tree)]) == red, ref
    assert resolve_reference("img/red.png", f"file://{manifest}", [f"file://{tree}"]) == red
    # no roots: the manifest's folder is the only one
    assert resolve_reference("img/red.png", manifest, []) == red
    with pytest.raises(DecodeError):
        resolve_reference("../ds/img/red.png", str(tree / "ds" / "img" / "m.jsonl"), [])


def test_gs_references():
    m = "gs://bkt/data/set/m.jsonl"
    roots = ["gs://bkt/data"]
    assert resolve_reference("img/a.png", m, roots) == "gs://bkt/data/set/img/a.png"
    assert resolve_reference("../x/./b.png", m, roots) == "gs://bkt/data/x/b.png"
    assert resolve_reference("gs://bkt/data/y.png", m, roots) == "gs://bkt/data/y.png"
    for ref in ("../../x.png", "../../../../other/x.png", "gs://other/data/x.png",
                "gs://bkt/database/x.png", "/etc/passwd", "file:///etc/passwd",
                "http://127.0.0.1:1/x.png", "gs://bkt/data/../../x.png"):
        with pytest.raises(DecodeError) as e:
            resolve_reference(ref, m, roots)
        assert e.value.reason == Reason.FORBIDDEN_REFERENCE, ref


def test_record_id_deterministic_and_order_sensitive():
    a = [("text", b"hello"), ("image", b"\x89PNGdata")]
    assert record_id(a) == record_id(list(a))
    assert record_id(a) != record_id(a[::-1])
    # separators: moving bytes across a part boundary or changing a kind changes the id
    assert record_id([("text", b"ab"), ("text", b"c")]) != record_id([("text", b"a"),
                                                                       ("text", b"bc")])
    assert record_id([("image", b"x")]) != record_id([("audio", b"x")])
    assert len(record_id(a)) == 64
