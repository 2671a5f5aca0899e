"""One schema version: every manifest and every Parquet file carries it (with column
descriptions); readers refuse a version they do not know (exit 2) and read older ones."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.shard import run_shard
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.schemas.records import DESCRIPTION, EXAMPLE, SCHEMA_VERSION, TABLES, empty_part, to_table


def _tiny_version(root: pathlib.Path) -> pathlib.Path:
    writer = mf.VersionWriter(str(root), "ingest", "ingest-0000000000000001")
    part = empty_part("text") | {"text": "a red square"}
    rec = writer.write_part("examples", "part-00000", to_table(
        [{"id": "e1", "modality": "text", "parts": [part], "source_uris": ["x.txt"]}], EXAMPLE))
    writer.commit({"examples": [rec]}, {"examples": 1}, {}, {})
    return pathlib.Path(writer.dir)


def _set_version(version_dir: pathlib.Path, value: int | None) -> None:
    path = version_dir / mf.MANIFEST
    body = json.loads(path.read_text())
    if value is None:
        body.pop("schema_version")
    else:
        body["schema_version"] = value
    path.write_text(json.dumps(body))


def test_manifest_records_the_version(tmp_path):
    d = _tiny_version(tmp_path)
    assert json.loads((d / mf.MANIFEST).read_text())["schema_version"] == SCHEMA_VERSION


def test_unknown_version_is_refused(tmp_path):
    d = _tiny_version(tmp_path)
    _set_version(d, SCHEMA_VERSION + 100)
    with pytest.raises(mf.UnknownSchemaVersion, match="schema_version"):
        mf.resolve_input(str(d))
    with pytest.raises(mf.UnknownSchemaVersion):
        mf.resolve_input(str(tmp_path))  # as a root's newest version too
    manifest = mf.read_manifest(str(d))
    with pytest.raises(mf.UnknownSchemaVersion):
        mf.read_table(str(d), manifest, "examples")


def test_unknown_version_is_exit_2_on_the_cli(tmp_path):
    d = _tiny_version(tmp_path / "ex")
    _set_version(d, SCHEMA_VERSION + 100)
    proc = subprocess.run([sys.executable, "-m", "loom.jobs.cli", "synth", "--examples", str(d),
                           "--output", str(tmp_path / "pairs"), "--dry-run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "schema_version" in proc.stdout + proc.stderr


def test_a_manifest_from_before_versions_reads_as_version_1(tmp_path):
    d = _tiny_version(tmp_path)
    _set_version(d, None)
    vdir, manifest = mf.resolve_input(str(d))
    assert manifest.schema_version == 1
    assert mf.read_table(vdir, manifest, "examples").num_rows == 1


def _check_file(path: pathlib.Path) -> str:
    meta = pq.read_metadata(path).metadata
    assert meta[b"loom.schema_version"] == str(SCHEMA_VERSION).encode(), path
    table = meta[b"loom.table"].decode()
    schema = pq.read_schema(path)
    assert table in TABLES, path
    for field in schema:
        assert field.metadata and field.metadata.get(DESCRIPTION), (path, field.name)
    described = json.loads(meta[b"loom.columns"])
    assert set(described) == set(schema.names)
    return table


@pytest.mark.slow
def test_every_parquet_file_of_ingest_synth_shard_is_self_describing(tmp_path):
    raw = tmp_path / "raw"
    generate_corpus(str(raw), 12, 12, seed=3)
    (raw / "empty.txt").write_bytes(b"")  # a rejected row too
    ing = run_ingest(str(raw), str(tmp_path / "examples"))
    syn = run_synth(ing["uri"], str(tmp_path / "pairs"))
    sh = run_shard(syn["uri"], str(tmp_path / "shards"), rows_per_shard=16)
    tables = set()
    for result in (ing, syn, sh):
        files = sorted(pathlib.Path(result["uri"]).rglob("*.parquet"))
        assert files, result["uri"]
        tables |= {_check_file(p) for p in files}
        manifest = json.loads((pathlib.Path(result["uri"]) / mf.MANIFEST).read_text())
        assert manifest["schema_version"] == SCHEMA_VERSION
    assert {"examples", "rejected", "files", "pairs", "shards"} <= tables


def test_side_files_name_the_version_too(tmp_path):
    """Files outside a dataset version (embedding cache parts, training metrics) as well."""
    import pyarrow as pa
    from loom.schemas import storage

    storage.write_parquet(pa.table({"step": [1, 2]}), str(tmp_path / "metrics.parquet"))
    meta = pq.read_metadata(tmp_path / "metrics.parquet").metadata
    assert meta[b"loom.schema_version"] == str(SCHEMA_VERSION).encode()


def test_an_older_files_missing_columns_read_as_null(tmp_path):
    """A column added by a later schema version reads as null from older files."""
    import pyarrow as pa

    d = _tiny_version(tmp_path)
    manifest = mf.read_manifest(str(d))
    part = d / manifest.tables["examples"][0].path
    pq.write_table(pq.read_table(part).drop_columns(["metadata"]), part)  # as an old file
    rows = mf.read_table(str(d), manifest, "examples").to_pylist()
    assert rows[0]["metadata"] is None and rows[0]["id"] == "e1"
    assert isinstance(mf.read_table(str(d), manifest, "examples", columns=["metadata"]),
                      pa.Table)
