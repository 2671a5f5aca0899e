"""Archives through the whole ingest job: members counted, rows reused on a rerun."""

from __future__ import annotations

from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf

from tests.transforms import hostile_archives as ha


def _rows(out: dict, table: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(out["uri"])
    return mf.read_table(vdir, manifest, table).to_pylist()


def test_archives_counted_and_reused(tmp_path):
    media, root = tmp_path / "media", str(tmp_path / "out")
    media.mkdir()
    shard, _ = ha.webdataset_tar()
    (media / "shard-000.tar").write_bytes(shard)
    (media / "shard-000.tar.gz").write_bytes(ha.make_tar(
        [ha._reg("a/0001.png", ha.png()), ha._reg("a/0001.txt", ha.CAPTION)], compress=True))
    (media / "batch.zip").write_bytes(ha.hostile_zip()[0])
    (media / "bomb.tar.gz").write_bytes(ha.gz_tar_bomb(24))  # ~1000x: past the 100x default
    (media / "loose.txt").write_bytes(ha.CAPTION)
    first = run_ingest(str(media), root, engine=Engine.BEAM)
    c = first["counts"]
    assert c["listed"] == 5 == c["accepted"] + c["rejected"] and c["rejected"] == 1
    assert c["rejected.decompression_bomb"] == 2  # the .tar.gz file and the zip's member
    assert c["archive_members"] == 22 + 2 + 9
    assert c["archive_members"] == c["archive_members_accepted"] + c["archive_members_rejected"]
    examples = _rows(first, "examples")
    assert len(examples) == c["examples"] == 4 + 1 + 2 + 1
    assert {e["source_uris"][0].removeprefix(f"{media}/") for e in examples} >= {
        "shard-000.tar#shard/0001", "shard-000.tar.gz#a/0001", "batch.zip#0001", "loose.txt"}

    (media / "new.txt").write_bytes(b"a new caption about a green triangle")
    second = run_ingest(str(media), root, engine=Engine.BEAM)
    c2 = second["counts"]
    assert c2["decoded"] == 1 and c2["reused_files"] == 5
    assert c2["rejected_records"] == c["rejected_records"]  # archive rows copied, not lost
    assert len(_rows(second, "rejected")) == len(_rows(first, "rejected"))
    assert len(_rows(second, "examples")) == len(examples) + 1
