"""A hostile input folder: links out, link loops, a fifo. Nothing outside is read, nothing
blocks, the listing stays finite, and every entry is accounted for."""

from __future__ import annotations

import os

from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage

SECRET = b"planted-secret-outside-the-input-3b9f"


def test_links_loops_and_fifos(tmp_path):
    (tmp_path / "outside.txt").write_bytes(SECRET + b" in a text file that must not be read")
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (media / "a.txt").write_bytes(b"a plain caption about a red circle")
    (media / "sub" / "b.txt").write_bytes(b"another caption, about a blue square")
    os.symlink(tmp_path / "outside.txt", media / "escape.txt")
    os.symlink(media / "sub" / "b.txt", media / "inside-link.txt")
    os.symlink(media, media / "sub" / "loop")  # two loops: 2^depth paths if followed
    os.symlink(media / "sub", media / "sub" / "loop2")
    os.symlink(tmp_path / "nowhere.txt", media / "dangling.txt")
    os.mkfifo(media / "pipe.txt")  # opening it would block forever
    listing = [e.uri.removeprefix(f"{media}/") for e in storage.list_files(str(media))]
    assert listing == ["a.txt", "dangling.txt", "escape.txt", "inside-link.txt", "pipe.txt",
                       "sub/b.txt", "sub/loop", "sub/loop2"]
    out = run_ingest(str(media), str(tmp_path / "out"), engine=Engine.BEAM)
    c = out["counts"]
    assert c["listed"] == 8 == c["accepted"] + c["duplicate"] + c["rejected"]
    assert c["accepted"] == 2 and c["duplicate"] == 1  # inside-link.txt duplicates b.txt
    vdir, manifest = mf.resolve_input(out["uri"])
    rejected = {r["uri"].removeprefix(f"{media}/"): r["reason"]
                for r in mf.read_table(vdir, manifest, "rejected").to_pylist()}
    assert rejected == {n: "forbidden_reference" for n in ("dangling.txt", "escape.txt",
                                                          "pipe.txt", "sub/loop", "sub/loop2")}
    for dirpath, _, names in os.walk(tmp_path / "out"):
        for name in names:
            assert SECRET not in (open(os.path.join(dirpath, name), "rb").read())
