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
