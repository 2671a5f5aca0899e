"""Files added to a prefix: a rerun decodes only the new ones and reuses the old rows."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from loom.jobs.corpus import generate_corpus
from loom.pipelines import ingest_once, neardup
from loom.pipelines.ingest import run_ingest
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.transforms.scenes import describe, random_scene, render_image


def _rows(out: dict, table: str) -> list[dict]:
    vdir, manifest = mf.resolve_input(out["uri"])
    return mf.read_table(vdir, manifest, table).to_pylist()


@pytest.mark.parametrize("where", ["driver", "engine"])
def test_added_files_decode_alone(tmp_path, monkeypatch, where):
    """`engine`: copies resolved and near-dup groups rewritten on the engine, as a large
    corpus's are (prior outcomes then read by the workers), not in the driver."""
    if where == "engine":
        monkeypatch.setattr(ingest_once, "LOCAL_MAX_FILES", 0)
        monkeypatch.setattr(neardup, "LOCAL_MAX_PARTS", 0)
    generate_corpus(str(tmp_path / "c"), 20, 20, seed=3)
    media, root = str(tmp_path / "c" / "media"), str(tmp_path / "out")
    first = run_ingest(media, root, engine=Engine.BEAM)
    assert first["counts"]["reused_files"] == 0
    rng = random.Random(9)
    (tmp_path / "c" / "media" / "images" / "new.png").write_bytes(
        render_image(random_scene(rng), rng))
    (tmp_path / "c" / "media" / "texts" / "new.txt").write_text(describe(random_scene(rng), rng))
    (tmp_path / "c" / "media" / "texts" / "new-empty.txt").write_bytes(b"")
    first_image = (tmp_path / "c" / "media" / "images" / "img-00000.png").read_bytes()
    (tmp_path / "c" / "media" / "images" / "zz-copy.png").write_bytes(first_image)
    second = run_ingest(media, root, engine=Engine.BEAM)
    c1, c2 = first["counts"], second["counts"]
    assert second["version"] != first["version"] and not second["reused"]
    assert c2["decoded"] == 3
    assert c2["reused_files"] == c1["accepted"] + c1["rejected"]
    assert c2["listed"] == c1["listed"] + 4 == c2["accepted"] + c2["duplicate"] + c2["rejected"]
    assert c2["duplicate"] == c1["duplicate"] + 1
    assert c2["accepted"] == c1["accepted"] + 2 and c2["rejected"] == c1["rejected"] + 1
    old = {e["id"]: e for e in _rows(first, "examples")}
    new = {e["id"]: e for e in _rows(second, "examples")}
    assert len(new) == len(_rows(second, "examples"))  # no duplicated rows
    assert set(old) < set(new) and len(new) == len(old) + 2
    assert all(new[i]["parts"] == old[i]["parts"] for i in old)  # same tokens: same tokenizer
    # A reused row gains the copy that arrived since: every source URI is listed.
    copied = next(e for e in new.values() if any(u.endswith("zz-copy.png")
                                                 for u in e["source_uris"]))
    assert copied["id"] in old and len(copied["source_uris"]) == len(old[copied["id"]]["source_uris"]) + 1
    assert len(_rows(second, "rejected")) == len(_rows(first, "rejected")) + 1
    for out in (first, second):  # counts per modality and reason: reused rows counted too
        want = Counter(f"examples.{e['modality']}" for e in _rows(out, "examples"))
        want.update(f"rejected.{r['reason']}" for r in _rows(out, "rejected"))
        assert {k: v for k, v in out["counts"].items()
                if k.startswith(("examples.", "rejected."))} == dict(want)
    outcomes = {r["uri"].rsplit("/", 1)[-1]: r["outcome"] for r in _rows(second, "files")}
    assert outcomes["new.png"] == "accepted" and outcomes["new-empty.txt"] == "rejected"
    was = {r["uri"].rsplit("/", 1)[-1]: r["outcome"] for r in _rows(first, "files")}
    assert "rejected" in was.values() and {u: outcomes[u] for u in was} == was
    # Reused rows are copied one prior part at a time, each into its own part, in order.
    m1, m2 = (mf.resolve_input(o["uri"])[1] for o in (first, second))
    prior_parts = [f.rows for f in m1.tables["examples"]]
    assert len(prior_parts) > 1, "the prior version needs several parts for this check"
    assert [f.rows for f in m2.tables["examples"] if "/reused-" in f.path] == prior_parts
    assert run_ingest(media, root, engine=Engine.BEAM)["reused"] is True


def test_a_given_tokenizer_is_kept(tmp_path):
    """Backfill applies a checkpoint's spec: its tokenizer must not be retrained."""
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.tokenizer import train_tokenizer

    generate_corpus(str(tmp_path / "c"), 4, 6, seed=4)
    media = str(tmp_path / "c" / "media")
    tok = train_tokenizer(["only these words"], 100)
    out = run_ingest(media, str(tmp_path / "out"), PreprocessingSpec(tokenizer_json=tok))
    spec = PreprocessingSpec.model_validate_json((tmp_path / "out" / out["version"] /
                                                  "preprocessing.json").read_text())
    assert spec.tokenizer_json == tok
    trained = run_ingest(media, str(tmp_path / "out2"))
    assert trained["version"] != out["version"]
