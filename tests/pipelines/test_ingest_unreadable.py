"""Files the storage will not give back: one is a Rejected `unreadable` row; most of the
listing means a misconfigured input (a local path other nodes cannot see), so the stage
fails with exit 1 and commits nothing (it used to commit a version of rejected rows)."""

from __future__ import annotations

import pytest
from loom.jobs.cli import app
from loom.jobs.corpus import generate_corpus
from loom.pipelines import ingest
from loom.schemas import storage
from loom.schemas.records import Reason
from typer.testing import CliRunner


def _listing_with_vanished(monkeypatch, vanished: int):
    """Listing as it was before `vanished` files were deleted (names only: no bytes)."""
    real = storage.list_files

    def listed(prefix: str, suffix: str = ""):  # ingest's listing, streamed
        entries = real(prefix, suffix)
        gone = [storage.FileEntry(storage.join(prefix, f"gone-{i}.png"), 10, 0)
                for i in range(vanished)]
        yield from sorted(entries + gone, key=lambda e: e.uri)

    monkeypatch.setattr(ingest.storage, "iter_files", listed)


def test_one_vanished_file_is_a_rejected_row(tmp_path, monkeypatch):
    generate_corpus(str(tmp_path / "c"), 3, 3, seed=1, bad_files=False)
    _listing_with_vanished(monkeypatch, 1)
    out = ingest.run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "out"))
    rejected = storage.read_parquet(
        [e.uri for e in storage.list_files(out["uri"], ".parquet") if "/rejected/" in e.uri])
    rows = {r["uri"].rsplit("/", 1)[-1]: r["reason"] for r in rejected.to_pylist()}
    assert rows == {"gone-0.png": Reason.UNREADABLE.value}
    assert out["counts"]["accepted"] == 6


def test_mostly_unreadable_listing_fails_and_commits_nothing(tmp_path, monkeypatch):
    generate_corpus(str(tmp_path / "c"), 1, 1, seed=1, bad_files=False)
    _listing_with_vanished(monkeypatch, 3)
    res = CliRunner().invoke(app, ["ingest", "--input", str(tmp_path / "c" / "media"),
                                   "--output", str(tmp_path / "out")])
    assert res.exit_code == 1, res.output
    assert "3 of 5 listed files could not be read" in res.stderr
    assert not [e for e in storage.list_files(str(tmp_path / "out")) if
                e.uri.endswith("manifest.json")]
    with pytest.raises(ingest.StorageFailure):
        ingest.run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "out"))
