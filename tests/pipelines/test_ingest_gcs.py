"""The same ingest against gs:// (a GCS emulator on 127.0.0.1), input and output."""

from __future__ import annotations

import hashlib
import uuid

from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage


def test_ingest_reads_and_writes_gs(gcs):
    base = f"gs://{gcs.bucket}/ingest-{uuid.uuid4().hex[:8]}"
    generate_corpus(f"{base}/corpus", 8, 8, seed=5)
    out = run_ingest(f"{base}/corpus/media", f"{base}/examples", engine=Engine.BEAM)
    c = out["counts"]
    assert out["uri"].startswith(f"{base}/examples/ingest-")
    assert c["listed"] == 16 + 5 == c["accepted"] + c["duplicate"] + c["rejected"]
    assert c["accepted"] == 16 + 1  # the mislabeled PNG is an image; the copy a duplicate
    vdir, manifest = mf.resolve_input(f"{base}/examples")  # newest version, found on GCS
    assert vdir == out["uri"]
    examples = mf.read_table(vdir, manifest, "examples")
    assert examples.num_rows == c["examples"] == 17
    assert all(u.startswith(f"{base}/corpus/media/") for s in
               examples.column("source_uris").to_pylist() for u in s)
    # Readers trust the manifest: every listed file exists with its checksum.
    for f in manifest.tables["examples"]:
        assert hashlib.sha256(storage.read_bytes(f"{vdir}/{f.path}")).hexdigest() == f.sha256
    assert run_ingest(f"{base}/corpus/media", f"{base}/examples")["reused"] is True
