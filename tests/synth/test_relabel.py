"""FRet relabel: the LLM picks the best positive among the mined candidates; the output
records which positives changed, keeps the triples schema, and a rerun is free."""

from __future__ import annotations

from loom.schemas import manifest as mf
from loom.schemas.records import EXAMPLE, TRIPLE, to_table
from loom.synth.client import LLMConfig
from loom.synth.offline_server import server_stats

from tests.synth.conftest import text_example

DOCS = {
    "red": "A small red circle sits at the top left of the frame.",
    "blue": "A large blue square fills the bottom right corner.",
    "green": "A medium green triangle in the center of the picture.",
    "black": "A tiny black diamond near the middle left edge.",
}


def _dataset(root: str, stage: str, table: str, rows, schema, lineage: dict) -> str:
    version = mf.version_id(stage, [], {"rows": len(rows), "lineage": lineage})
    writer = mf.VersionWriter(root, stage, version)
    files = [writer.write_part(table, "part-00000", to_table(rows, schema))]
    writer.commit({table: files}, {table: len(rows)}, {}, lineage)
    return writer.dir


def _neg(eid: str, rank: int) -> dict:
    return {"id": eid, "score": 0.5 - rank / 10, "modality": "text", "rank": rank}


def test_relabel_picks_the_true_positive(tmp_path, server_url):
    from loom.pipelines.synth_relabel import run_relabel

    ex = {k: text_example(v) for k, v in DOCS.items()}
    ex_dir = _dataset(str(tmp_path / "ex"), "ingest", "examples", list(ex.values()), EXAMPLE, {})

    def triple(pid: str, query: str, pos: str, negs: list[str]) -> dict:
        return {"pair_id": pid, "kind": "keyword", "query_text": query, "query_modality": "text",
                "positive_id": ex[pos]["id"], "positive_modality": "text", "positive_score": 0.9,
                "negatives": [_neg(ex[n]["id"], r) for r, n in enumerate(negs)],
                "checkpoint": "run-a/step-1", "mining_config": "{}"}

    triples = [
        triple("p1", "small red circle top left", "red", ["blue", "green"]),  # right already
        triple("p2", "large blue square bottom right", "green", ["blue", "black"]),  # mislabelled
        triple("p3", "tiny black diamond", "red", ["green", "black"]),  # mislabelled
    ]
    t_dir = _dataset(str(tmp_path / "mine"), "mine", "triples", triples, TRIPLE,
                     {"examples": ex_dir, "pairs": "n/a"})
    before = server_stats(server_url)["requests"]
    out = run_relabel(t_dir, str(tmp_path / "rel"), LLMConfig(base_url=server_url), negatives=2)
    assert server_stats(server_url)["requests"] - before == 3  # one call per triple
    assert out["counts"]["positives_changed"] == 2 and out["counts"]["rejected"] == 0
    assert out["llm_calls"] == 3
    vdir, manifest = mf.resolve_input(out["uri"])
    rel = {r["pair_id"]: r for r in mf.read_table(vdir, manifest, "relabels").to_pylist()}
    assert not rel["p1"]["changed"]
    assert rel["p2"]["changed"] and rel["p2"]["new_positive_id"] == ex["blue"]["id"]
    assert rel["p3"]["new_positive_id"] == ex["black"]["id"]
    new = {t["pair_id"]: t for t in mf.read_table(vdir, manifest, "triples").to_pylist()}
    assert new["p2"]["positive_id"] == ex["blue"]["id"]
    assert ex["green"]["id"] in {n["id"] for n in new["p2"]["negatives"]}  # old label: a negative
    assert ex["blue"]["id"] not in {n["id"] for n in new["p2"]["negatives"]}
    assert all(len(t["negatives"]) <= 2 for t in new.values())
    # A rerun into the same root is free: the same version, no request reaches the server.
    before = server_stats(server_url)["requests"]
    rerun = run_relabel(t_dir, str(tmp_path / "rel"), LLMConfig(base_url=server_url), negatives=2)
    assert server_stats(server_url)["requests"] == before
    assert rerun["uri"] == out["uri"] and rerun["reused"] and rerun["llm_calls"] == 0
    assert rerun["counts"]["positives_changed"] == 2
    again = run_relabel(t_dir, str(tmp_path / "rel2"), LLMConfig(base_url=server_url), negatives=2)
    assert again["counts"]["positives_changed"] == 2  # a new root: its own cache, same answers
    assert server_stats(server_url)["requests"] == before + 3


def _fixture(tmp_path, n: int = 6) -> tuple[str, dict]:
    """n triples over the four documents (every one mislabelled or not, by turns)."""
    ex = {k: text_example(v) for k, v in DOCS.items()}
    ex_dir = _dataset(str(tmp_path / "ex"), "ingest", "examples", list(ex.values()), EXAMPLE, {})
    names = sorted(DOCS)
    triples = []
    for i in range(n):
        pos, negs = names[i % 4], [names[(i + 1) % 4], names[(i + 2) % 4]]
        triples.append({"pair_id": f"p{i}", "kind": "keyword", "query_text": f"{DOCS[pos]} #{i}",
                        "query_modality": "text", "positive_id": ex[pos]["id"],
                        "positive_modality": "text", "positive_score": 0.9,
                        "negatives": [_neg(ex[m]["id"], r) for r, m in enumerate(negs)],
                        "checkpoint": "run-a/step-1", "mining_config": "{}"})
    t_dir = _dataset(str(tmp_path / "mine"), "mine", "triples", triples, TRIPLE,
                     {"examples": ex_dir, "pairs": "n/a"})
    return t_dir, ex


def test_relabel_budget_stops_resumes_and_reports_synths_counts(tmp_path, server_url):
    import pytest
    from loom.pipelines.synth_relabel import run_relabel
    from loom.schemas.records import LLM_STAT_NAMES
    from loom.synth.budget import BudgetExceeded
    from loom.synth.offline_server import server_stats

    t_dir, _ = _fixture(tmp_path)
    llm = LLMConfig(base_url=server_url)
    root = str(tmp_path / "rel")
    served = server_stats(server_url)["answered"]
    with pytest.raises(BudgetExceeded) as stop:  # each triple reserves 2 calls (a repair)
        run_relabel(t_dir, root, llm, negatives=1, max_calls=5)
    first = stop.value.payload
    assert first["stopped"] == "budget" and first["counts"]["triples_done"] == 2
    assert 0 < first["counts"]["llm_calls"] <= 5 and first["usage"]["requests"] <= 5
    with pytest.raises(FileNotFoundError):
        mf.resolve_input(root)  # nothing visible until the run completes
    done = run_relabel(t_dir, root, llm, negatives=1)  # resumes: pays for the other 4 only
    assert done["llm_calls"] == 4 and done["counts"]["cache_hits"] == 2
    assert server_stats(server_url)["answered"] - served == 6  # never paid twice
    assert set(LLM_STAT_NAMES) <= set(done["counts"])  # the keys synth reports
    assert done["usage"]["requests"] == done["counts"]["requests"] == 4
    assert done["counts"]["triples"] == 6 and done["counts"]["relabelled"] == 6

    # A rerun after the commit is lost (killed before it) pays nothing: all cached.
    (tmp_path / "rel" / done["version"] / mf.MANIFEST).unlink()
    served = server_stats(server_url)["answered"]
    again = run_relabel(t_dir, root, llm, negatives=1)
    assert again["llm_calls"] == 0 and again["counts"]["cache_hits"] == 6
    assert server_stats(server_url)["answered"] == served
    vdir, m = mf.resolve_input(again["uri"])
    assert sorted(r["pair_id"] for r in mf.read_table(vdir, m, "relabels").to_pylist()) == \
        [f"p{i}" for i in range(6)]


def test_relabel_on_ray_gives_beams_rows(tmp_path, server_url, ray_session):
    from loom.pipelines.runner import Engine
    from loom.pipelines.synth_relabel import run_relabel

    t_dir, _ = _fixture(tmp_path, 4)
    llm = LLMConfig(base_url=server_url)
    rows = {}
    for engine in (Engine.BEAM, Engine.RAY):
        out = run_relabel(t_dir, str(tmp_path / engine.value), llm, negatives=1, engine=engine)
        vdir, m = mf.resolve_input(out["uri"])
        rows[engine] = sorted(mf.read_table(vdir, m, "triples").to_pylist(),
                              key=lambda r: r["pair_id"])
    assert rows[Engine.BEAM] == rows[Engine.RAY]
