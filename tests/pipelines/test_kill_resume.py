"""A `loom ingest` SIGKILLed mid-run leaves no visible version; a rerun completes it exactly."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.schemas import manifest as mf

from tests.procs import sigkill_when

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ingest(media: str, out: str) -> subprocess.Popen:
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "loom.jobs.cli", "ingest", "--input", media,
                             "--output", out], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _mid_run(out: pathlib.Path) -> bool:
    for vdir in out.glob("ingest-*"):
        if any((vdir / "examples").glob("*.parquet")) and not (vdir / "manifest.json").exists():
            return True
    return False


def test_sigkill_mid_ingest_then_rerun(tmp_path):
    corpus = tmp_path / "corpus"
    generate_corpus(str(corpus), 400, 100, seed=2)
    media, out = str(corpus / "media"), tmp_path / "examples"

    proc = _ingest(media, str(out))
    sigkill_when(proc, lambda: _mid_run(out), 240, "part file")
    assert _mid_run(out)  # parts were written, the manifest was not
    with pytest.raises(FileNotFoundError):
        mf.resolve_input(str(out))

    proc = _ingest(media, str(out))
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    versions = [d for d in out.iterdir() if d.is_dir()]
    assert len(versions) == 1
    vdir, manifest = mf.resolve_input(str(out))
    assert pathlib.Path(vdir) == versions[0]
    c = manifest.counts
    assert c["listed"] == sum(1 for p in (corpus / "media").rglob("*") if p.is_file())
    assert c["listed"] == c["accepted"] + c["duplicate"] + c["rejected"]
    ids = mf.read_table(vdir, manifest, "examples", columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == c["accepted"]
    uris = [r["uri"] for r in mf.read_table(vdir, manifest, "rejected").to_pylist()]
    assert len(uris) == len(set(uris)) == c["rejected"]
    # ...and the resumed dataset equals an uninterrupted run's, row for row.
    clean = run_ingest(media, str(tmp_path / "clean"))
    assert clean["version"] == manifest.version
    cdir, cman = mf.resolve_input(str(tmp_path / "clean"))
    for table, key in (("examples", "id"), ("rejected", "uri"), ("duplicates", "uri")):
        got = sorted(mf.read_table(vdir, manifest, table).to_pylist(), key=lambda r: r[key])
        want = sorted(mf.read_table(cdir, cman, table).to_pylist(), key=lambda r: r[key])
        assert got == want, table
