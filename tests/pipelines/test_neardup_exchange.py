"""Near-duplicate groups as an engine exchange: families of near-copies spread over many
Examples parts come out as the groups they were made as, on Beam and on Ray, and the Ray
driver never reads a signature."""

from __future__ import annotations

import random

import pyarrow.parquet as pq
import pytest
from loom.pipelines import neardup
from loom.pipelines.neardup import group_near_dups, near_dup_groups_of
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import EXAMPLE, to_table
from loom.transforms.neardup import minhash, near_dup_groups

WORDS = ("harbor lantern copper meadow signal quartz ribbon timber velvet orbit canyon "
         "ember fossil glacier hollow island jasper kettle lumen marble nectar").split()


def _families(seed: int = 3) -> tuple[list[tuple[str, bytes | None]], dict[str, str]]:
    """(id, signature) rows and the groups they were made as: 12 text families of 1-4
    near-copies (one word changed in ~60), image families of byte-identical pHashes,
    chains of pHashes, and Examples without a signature. Ids are shuffled so families straddle parts."""
    rng = random.Random(seed)
    rows, made = [], {}
    n = 0

    def add(sig: bytes | None, family: list[str]) -> None:
        nonlocal n
        ex_id = f"ex-{rng.randrange(10**9):09d}-{n:03d}"
        n += 1
        rows.append((ex_id, sig))
        family.append(ex_id)

    families: list[list[str]] = []
    for f in range(12):
        base = [rng.choice(WORDS) for _ in range(60)] + [f"family{f}"]
        fam: list[str] = []
        for c in range(1 + f % 4):
            text = list(base)
            if c:
                text[rng.randrange(60)] = "zebra"
            add(b"T" + minhash(" ".join(text)).astype(">u4").tobytes(), fam)
        families.append(fam)
    for f in range(5):
        fam = []
        sig = b"I" + rng.getrandbits(64).to_bytes(8, "big")
        for _ in range(1 + f % 3):
            add(sig, fam)
        families.append(fam)
    for _ in range(4):  # chains a ~ b ~ c where a and c share no bucket (8 bits apart):
        # only the driver's union of what the partitions found joins them
        a = rng.getrandbits(64)
        b = a ^ sum(1 << bit for bit in (0, 9, 18, 27))  # one bit in each of bands 0-3
        c = b ^ sum(1 << bit for bit in (28, 37, 46, 55))  # and in bands 3-6
        fam = []
        for h in (a, b, c):
            add(b"I" + h.to_bytes(8, "big"), fam)
        families.append(fam)
    for _ in range(6):
        add(None, [])
    for fam in families:
        for ex_id in fam:
            made[ex_id] = min(fam)
    rng.shuffle(rows)
    return rows, made


def _parts(root: str, rows: list[tuple[str, bytes | None]], per_part: int) -> dict:
    writer = mf.VersionWriter(root, "ingest", "ingest-handmade")
    files = []
    for k in range(0, len(rows), per_part):
        chunk = rows[k:k + per_part]
        files.append(writer.write_part("examples", f"part-{k // per_part:05d}", to_table([
            {"id": i, "modality": "text", "parts": [], "source_uris": [f"gs://b/{i}"],
             "near_dup_group": i, "near_dup_sig": sig} for i, sig in chunk], EXAMPLE)))
    return {"writer": writer, "tables": {"examples": files}}


@pytest.mark.parametrize("engine", [Engine.BEAM, Engine.RAY])
def test_groups_are_the_families_they_were_made_as(engine, tmp_path, monkeypatch, request):
    if engine == Engine.RAY:
        request.getfixturevalue("ray_session")
    rows, made = _families()
    multi = {m for m in made if sum(g == made[m] for g in made.values()) > 1}
    assert len(multi) > 20
    version = _parts(str(tmp_path / "v"), rows, 7)
    files = version["tables"]["examples"]
    assert len(files) > 6
    paths = [storage.join(version["writer"].dir, f.path) for f in files]
    reads: list = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: reads.append(
        k.get("columns")) or real(path, *a, **k))
    groups = near_dup_groups_of(engine, version["writer"].dir, paths)
    monkeypatch.undo()
    assert groups == {m: made[m] for m in multi}
    if engine == Engine.RAY:  # every step ran in workers: the driver read no signature
        assert not [c for c in reads if c is None or "near_dup_sig" in c]
    # the one-process grouping agrees, singletons included
    assert near_dup_groups(rows) == {ex_id: made.get(ex_id, ex_id) for ex_id, _ in rows}


@pytest.mark.parametrize("where", ["driver", "beam", "ray"])
def test_only_changed_parts_are_rewritten_with_their_groups(tmp_path, monkeypatch, request,
                                                            where):
    """`beam`, `ray`: the parts are rewritten on that engine, as a large corpus's are."""
    engine = Engine.RAY if where == "ray" else Engine.BEAM
    if where == "ray":
        request.getfixturevalue("ray_session")
    if where != "driver":
        monkeypatch.setattr(neardup, "LOCAL_MAX_PARTS", 0)
    rows, made = _families(seed=5)
    version = _parts(str(tmp_path / "v"), rows, 9)
    files = version["tables"]["examples"]
    before = [(f.path, f.sha256) for f in files]
    counts = group_near_dups(engine, version["writer"], version["tables"])
    sizes: dict[str, int] = {}
    for g in made.values():
        sizes[g] = sizes.get(g, 0) + 1
    assert counts == {"near_duplicate": sum(n - 1 for n in sizes.values()),
                      "near_dup_groups": sum(1 for n in sizes.values() if n > 1)}
    d = version["writer"].dir
    for (path, sha), f in zip(before, version["tables"]["examples"], strict=True):
        t = pq.read_table(storage.join(d, f.path))
        assert f.path == path
        want = [made.get(i, i) for i in t.column("id").to_pylist()]
        assert t.column("near_dup_group").to_pylist() == want
        assert t.column("source_uris").to_pylist() == [[f"gs://b/{i}"]
                                                       for i in t.column("id").to_pylist()]
        changed = want != t.column("id").to_pylist()
        assert (f.sha256 != sha) == changed, path  # untouched parts are not rewritten
