"""Archives: WebDataset samples become Examples; hostile members are Rejected, all counted."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.archives import ArchiveLimits, archive_kind, forbidden_name, split_key
from loom.transforms.ingest import IngestConfig, IngestStage
from loom.transforms.tokenizer import train_tokenizer

from tests.transforms import hostile_archives as ha

LIMITS = ArchiveLimits(max_members=50, max_member_bytes=60_000, max_total_bytes=2 << 20, max_ratio=50,
                       ratio_floor_bytes=64 << 10)


@pytest.fixture(scope="module")
def stage():
    spec = PreprocessingSpec(image_size=32, tokenizer_json=train_tokenizer([ha.CAPTION.decode()],
                                                                           100))
    s = IngestStage(IngestConfig(spec=spec, isolate=False, archive=LIMITS))
    yield s
    s.teardown()


def ingest(stage, tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    batch = pa.RecordBatch.from_pylist([{"uri": str(path), "id": hashlib.sha256(data).hexdigest()}],
                                       schema=IngestStage.input_schema)
    out = stage.process_batch(batch)
    stats = out["stats"].to_pylist()[0]
    return str(path), out["examples"].to_pylist(), out["rejected"].to_pylist(), stats


def outcomes(uri, examples, rejected) -> dict[str, str]:
    got = {ex["source_uris"][0].removeprefix(uri + "#"): ex["modality"] for ex in examples}
    for r in rejected:
        if r["uri"] != uri:
            got[r["uri"].removeprefix(uri + "#")] = r["reason"]
    return got


def test_names_keys_and_kinds():
    assert split_key("shard/0001.seg.JPG") == ("shard/0001", "seg.jpg")
    assert split_key("noext") == ("noext", "")
    for bad in ("../a", "/a", "a/../../b", "C:/a", "\\a", "a\x00b", ""):
        assert forbidden_name(bad), bad
    assert forbidden_name("a/b..c/d.txt") is None
    assert archive_kind(ha.make_tar([])) is None  # an empty tar has no header to sniff
    assert archive_kind(ha.make_tar([ha._reg("a.txt", b"x")])) == "tar"
    assert archive_kind(ha.make_tar([ha._reg("a.txt", b"x")], compress=True)) == "tar"
    assert archive_kind(ha.many_members_zip(1)) == "zip"
    assert archive_kind(b"\x1f\x8b not gzip at all") is None


def test_webdataset_tar_samples_and_hostile_members(stage, tmp_path):
    data, expected = ha.webdataset_tar()
    uri, examples, rejected, stats = ingest(stage, tmp_path, "shard-000.tar", data)
    assert outcomes(uri, examples, rejected) == expected
    first = next(ex for ex in examples if ex["source_uris"][0].endswith("#shard/0001"))
    assert [p["kind"] for p in first["parts"]] == ["image", "text"]
    assert first["parts"][1]["tokens"]  # tokenized like any text
    meta = json.loads(first["metadata"])
    assert meta["json"] == {"license": "cc-by"} and meta["key"] == "shard/0001"
    assert json.loads(next(ex["metadata"] for ex in examples
                           if ex["modality"] == "image"))["cls"] == "7"
    # 22 members: 0001 (3) 0002 (2) 0003 0004, 8 forbidden, 0007 (2), 0008, 0009, 0010,
    # 0011 (2); accepted 7, rejected 15 (in 13 rows: a sample is one row)
    assert stats["accepted_files"] == 1 and stats["rejected_files"] == 0
    assert stats["archive_members"] == 22
    assert stats["archive_members_accepted"] == 7 and stats["archive_members_rejected"] == 15
    assert stats["rejected_records"] == len(rejected) == 13


def test_hostile_zip(stage, tmp_path):
    data, expected = ha.hostile_zip()
    uri, examples, rejected, stats = ingest(stage, tmp_path, "batch.zip", data)
    assert outcomes(uri, examples, rejected) == expected
    assert stats["archive_members"] == 9 == (stats["archive_members_accepted"]
                                             + stats["archive_members_rejected"])


@pytest.mark.parametrize("name,make,reason", [
    ("bomb.tar.gz", ha.gz_tar_bomb, "decompression_bomb"),
    ("big.zip", lambda: ha.make_zip([(f"{i}.txt", bytes(50_000), None) for i in range(45)]),
     "decompression_bomb"),
    ("many.zip", lambda: ha.many_members_zip(LIMITS.max_members + 1), "too_large"),
    ("cut.tar", lambda: ha.webdataset_tar()[0][:3000], "truncated"),
    ("cut-header.tar", lambda: ha.webdataset_tar()[0][:1024 + 512 + 300], "truncated"),
    ("garbage-mid.tar", lambda: (lambda d: d[:3584] + b"\x7f" * 512 + d[4096:])(
        ha.webdataset_tar()[0]), "decode_error"),
    ("liar.tar", ha.lying_size_tar, "truncated"),
    ("only-links.tar", lambda: ha.make_tar([ha._special("a.txt", b"2", "/etc/shadow")]),
     "forbidden_member"),
])
def test_whole_archive_rejected(stage, tmp_path, name, make, reason):
    uri, examples, rejected, stats = ingest(stage, tmp_path, name, make())
    assert examples == [] and stats["rejected_files"] == 1
    assert [r["reason"] for r in rejected if r["uri"] == uri] == [reason]


def test_zip_member_flags_and_lies(stage, tmp_path):
    uri, _, rejected, _ = ingest(stage, tmp_path, "enc.zip", ha.encrypted_flag_zip())
    assert {r["uri"]: r["reason"] for r in rejected}[uri + "#secret.txt"] == "encrypted"
    uri, _, rejected, _ = ingest(stage, tmp_path, "liar.zip", ha.lying_size_zip())
    assert {r["uri"]: r["reason"] for r in rejected}[uri + "#liar.txt"] == "decode_error"
