"""`loom ls`, `loom inspect`, `loom gc` over versions written by the real VersionWriter,
on a local folder and on gs:// (the GCS emulator)."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from loom.jobs.cli import app
from loom.jobs.ops import gc, gc_plan, inspect_version, list_versions
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import REJECTED, to_table
from typer.testing import CliRunner


def _version(root: str, stage: str, n: int, lineage: dict | None = None) -> str:
    vid = mf.version_id(stage, [str(n)], {})
    w = mf.VersionWriter(root, stage, vid)
    rows = to_table([{"uri": f"u{i}", "stage": stage, "reason": "empty"} for i in range(n)],
                    REJECTED)
    part = w.write_part("rejected", "part-00000", rows)
    w.commit({"rejected": [part]}, {"rejected": n}, {"n": n}, lineage or {})
    time.sleep(0.01)  # distinct created_at
    return w.dir


def _partial(root: str, n: int, age_s: float) -> str:
    d = storage.join(root, mf.version_id("ingest", [f"partial{n}"], {}))
    part = storage.join(d, "examples", "part-00000.parquet")
    storage.write_bytes(part, b"x" * 10)
    if age_s and not storage.is_remote(part):
        old = time.time() - age_s
        os.utime(part, (old, old))
    return d


def _workdir(base: str) -> dict[str, str]:
    ex, pairs = storage.join(base, "examples"), storage.join(base, "pairs")
    e1, e2, e3 = (_version(ex, "ingest", i) for i in (1, 2, 3))
    p1 = _version(pairs, "synth", 1, {"examples": e1, "examples_version": "x"})
    p2 = _version(pairs, "synth", 2, {"examples": e3, "previous": p1})
    run = storage.join(base, "checkpoints", "pft-0123456789abcdef")
    storage.write_bytes(storage.join(run, "lineage.json"), json.dumps({"shards": "elsewhere"})
                        .encode())
    return {"e1": e1, "e2": e2, "e3": e3, "p1": p1, "p2": p2,
            "old_partial": _partial(ex, 1, age_s=48 * 3600),
            "young_partial": _partial(ex, 2, age_s=0)}


def test_ls_lists_versions_lineage_sizes(tmp_path):
    v = _workdir(str(tmp_path))
    out = list_versions(str(tmp_path))
    by_uri = {x["uri"]: x for x in out["versions"]}
    assert set(by_uri) == {v["e1"], v["e2"], v["e3"], v["p1"], v["p2"]}
    assert by_uri[v["p1"]]["depends_on"] == [v["e1"]]
    assert by_uri[v["p2"]]["depends_on"] == [v["e3"]]  # `previous` is not a dependency
    assert all(x["bytes"] > 0 and x["files"] == 2 for x in by_uri.values())
    assert by_uri[v["e2"]]["rows"] == {"rejected": 2}
    assert {p["uri"] for p in out["partials"]} == {v["old_partial"], v["young_partial"]}


def test_gc_keeps_newest_and_what_they_use(tmp_path):
    v = _workdir(str(tmp_path))
    plan = gc_plan(str(tmp_path), keep=1)
    assert {d["uri"] for d in plan["delete"]} == {v["e1"], v["e2"], v["p1"], v["old_partial"]}
    # gc of one root alone still sees that a sibling root's version uses e1
    plan = gc_plan(storage.join(str(tmp_path), "examples"), keep=1)
    assert {d["uri"] for d in plan["delete"]} == {v["e2"], v["old_partial"]}
    why = {k["uri"]: k["why"] for k in plan["keep_versions"]}
    assert why[v["e1"]] == "used outside this root"
    # keeping both pairs versions keeps e1 through p1's lineage
    plan = gc_plan(str(tmp_path), keep=2)
    assert {d["uri"] for d in plan["delete"]} == {v["old_partial"]}


def test_gc_cli_dry_run_by_default_then_yes(tmp_path):
    v = _workdir(str(tmp_path))
    res = CliRunner().invoke(app, ["gc", str(tmp_path), "--keep", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["dry_run"] and out["counts"]["delete_versions"] == 3
    assert "would delete" in res.stderr
    assert all(os.path.isdir(v[k]) for k in v)
    res = CliRunner().invoke(app, ["gc", str(tmp_path), "--keep", "1", "--yes"])
    assert res.exit_code == 0, res.output
    gone = {"e1", "e2", "p1", "old_partial"}
    assert all(not os.path.exists(v[k]) for k in gone)
    assert all(os.path.isdir(v[k]) for k in set(v) - gone)
    assert os.path.isdir(tmp_path / "checkpoints" / "pft-0123456789abcdef")
    assert mf.resolve_input(str(tmp_path / "pairs"))[0] == v["p2"]


def test_gc_bad_keep_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["gc", str(tmp_path), "--keep", "0"])
    assert res.exit_code == 2


def test_ls_and_inspect_cli(tmp_path):
    v = _workdir(str(tmp_path))
    res = CliRunner().invoke(app, ["ls", str(tmp_path / "pairs")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["counts"]["versions"] == 2
    assert os.path.basename(v["p1"]) in res.stdout and "<- " in res.stdout
    res = CliRunner().invoke(app, ["inspect", v["p1"]])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["manifest"]["version"] == os.path.basename(v["p1"])
    assert [c["uri"] for c in out["lineage_chain"]] == [v["e1"]]
    assert "rejected: 1 rows in 1 files" in res.stdout
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "nothing")])
    assert res.exit_code == 2


def test_log_json_lines_are_json(tmp_path):
    _workdir(str(tmp_path))
    res = CliRunner().invoke(app, ["--log-json", "gc", str(tmp_path), "--keep", "1"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    res = CliRunner().invoke(app, ["--log-json", "inspect", str(tmp_path / "nothing")])
    assert res.exit_code == 2
    (rec,) = [json.loads(line) for line in res.stderr.splitlines() if line.strip()]
    assert rec["level"] == "ERROR" and rec["exit_code"] == 2


def test_gc_on_gcs(gcs):
    base = f"gs://{gcs.bucket}/gc-{uuid.uuid4().hex[:10]}"
    v = _workdir(base)
    assert {x["uri"] for x in list_versions(base)["versions"]} == {
        v[k] for k in ("e1", "e2", "e3", "p1", "p2")}
    out = gc(base, keep=1, dry_run=False, grace_s=3600, log_line=lambda m: None)
    assert {d["uri"] for d in out["delete"]} == {v["e1"], v["e2"], v["p1"]}
    left = {x["uri"] for x in list_versions(base)["versions"]}
    assert left == {v["e3"], v["p2"]}
    assert inspect_version(v["p2"])["lineage_chain"][0]["uri"] == v["e3"]


@pytest.mark.parametrize("keep", [1, 5])
def test_gc_never_deletes_what_a_survivor_uses(tmp_path, keep):
    v = _workdir(str(tmp_path))
    plan = gc_plan(str(tmp_path), keep=keep)
    deleted = {d["uri"] for d in plan["delete"]}
    for x in list_versions(str(tmp_path))["versions"]:
        if x["uri"] not in deleted:
            assert not set(x["depends_on"]) & deleted
    assert v["young_partial"] not in deleted


def test_gc_collects_a_backfills_private_ingest_versions(tmp_path):
    """A backfill root keeps its ingest versions in `_ingest/`: the one the kept backfill
    uses stays, the one only an older backfill used goes with it."""
    out = str(tmp_path / "embeddings")
    inner = storage.join(out, "_ingest")
    i1, i2 = _version(inner, "ingest", 1), _version(inner, "ingest", 2)
    b1 = _version(out, "backfill", 1, {"examples": i1})
    b2 = _version(out, "backfill", 2, {"examples": i2})
    assert {v["uri"] for v in list_versions(out)["versions"]} == {i1, i2, b1, b2}
    plan = gc_plan(out, keep=1)
    assert {d["uri"] for d in plan["delete"]} == {b1, i1}
    why = {k["uri"]: k["why"] for k in plan["keep_versions"]}
    assert why[b2] == "newest 1" and why[i2] in ("newest 1", f"used by {b2.rsplit('/', 1)[-1]}")


def _deep_workdir(base: str) -> dict[str, str]:
    """examples -> pairs -> triples -> shards, three levels of lineage below the newest shards,
    plus a checkpoint run (as train writes it) whose lineage names an older shards version.

    Only the newest version of each root is kept by `--keep 1`; everything else that stays
    does so through a chain of lineage, so a gc that follows one level only, or that ignores
    checkpoint runs, deletes something a survivor needs."""
    j = storage.join
    e = {i: _version(j(base, "examples"), "ingest", i) for i in range(4)}
    p = {i: _version(j(base, "pairs"), "synth", i, {"examples": e[i]}) for i in range(4)}
    t1 = _version(j(base, "triples"), "mine", 1, {"pairs": p[2]})
    t2 = _version(j(base, "triples"), "mine", 2, {"pairs": p[1]})  # newest, an old pairs
    s1 = _version(j(base, "shards"), "shard", 1, {"triples": t1, "previous": t2})
    s2 = _version(j(base, "shards"), "shard", 2, {"triples": t2, "reused_from": s1})
    run = j(base, "checkpoints", "ft-0123456789abcdef")
    storage.write_bytes(j(run, "lineage.json"), json.dumps({
        "shards": s1, "shards_version": os.path.basename(s1), "stage": "ft",
        "init": "pft-0123456789abcdef/step-00000010", "config": {"epochs": 1}}).encode())
    return {"e0": e[0], "e1": e[1], "e2": e[2], "e3": e[3], "p0": p[0], "p1": p[1],
            "p2": p[2], "p3": p[3], "t1": t1, "t2": t2, "s1": s1, "s2": s2}


def test_gc_follows_lineage_all_the_way_down(tmp_path):
    v = _deep_workdir(str(tmp_path))
    plan = gc_plan(str(tmp_path), keep=1)
    # s2 -> t2 -> p1 -> e1 (three levels); the run -> s1 -> t1 -> p2 -> e2 (four).
    # p0 (and so e0) is used by nothing kept; `previous` / `reused_from` keep nothing.
    assert {d["uri"] for d in plan["delete"]} == {v["p0"], v["e0"]}
    why = {k["uri"]: k["why"] for k in plan["keep_versions"]}
    name = os.path.basename
    assert why[v["s1"]] == "used outside this root"
    assert why[v["p1"]] == f"used by {name(v['t2'])}"
    assert why[v["e1"]] == f"used by {name(v['p1'])}"
    assert why[v["t1"]] == f"used by {name(v['s1'])}"
    assert why[v["e2"]] == f"used by {name(v['p2'])}"
    assert {why[v[k]] for k in ("e3", "p3", "t2", "s2")} == {"newest 1"}


def test_gc_deep_chain_deletes_only_the_unused(tmp_path):
    v = _deep_workdir(str(tmp_path))
    out = gc(str(tmp_path), keep=1, dry_run=False, log_line=lambda m: None)
    assert out["counts"]["deleted"] == 2
    left = {x["uri"] for x in list_versions(str(tmp_path))["versions"]}
    assert left == {v[k] for k in v} - {v["p0"], v["e0"]}
    for x in list_versions(str(tmp_path))["versions"]:  # every survivor can still be read
        for dep in x["depends_on"]:
            assert mf.read_manifest(dep) is not None, (x["uri"], dep)


def test_gc_one_root_keeps_what_a_checkpoint_chain_uses(tmp_path):
    _deep_workdir(str(tmp_path))
    plan = gc_plan(storage.join(str(tmp_path), "shards"), keep=1)
    assert plan["delete"] == []  # s1 is the checkpoint run's
    plan = gc_plan(storage.join(str(tmp_path), "triples"), keep=1)
    assert plan["delete"] == []  # t1 is named by s1's manifest
    plan = gc_plan(storage.join(str(tmp_path), "examples"), keep=1)
    assert plan["delete"] == []  # e0 is still named by p0 until pairs are collected


def test_gc_keep_two_and_a_run_without_lineage(tmp_path):
    v = _deep_workdir(str(tmp_path))
    storage.delete(storage.join(str(tmp_path), "checkpoints", "ft-0123456789abcdef",
                                "lineage.json"))
    plan = gc_plan(str(tmp_path), keep=1)
    # No run names s1 any more: s1, and t1 -> p2 -> e2 that only it used, go too.
    assert {d["uri"] for d in plan["delete"]} == {v[k] for k in
                                                 ("p0", "e0", "s1", "t1", "p2", "e2")}
    plan = gc_plan(str(tmp_path), keep=2)
    assert {d["uri"] for d in plan["delete"]} == {v["p0"], v["e0"]}


def test_gc_plan_json_is_the_contract(tmp_path):
    """The whole plan object (what `loom gc` prints), at a fixed clock: the grace period is
    inclusive (a partial exactly `grace_s` old goes), ages and sizes are reported."""
    v = _deep_workdir(str(tmp_path))
    ex = storage.join(str(tmp_path), "examples")
    old, young = _partial(ex, 1, age_s=0), _partial(ex, 2, age_s=0)
    t0 = 1_700_000_000
    for d, at in ((old, t0), (young, t0 + 1)):
        os.utime(os.path.join(d, "examples", "part-00000.parquet"), ns=(at * 10**9, at * 10**9))
    with pytest.raises(ValueError, match="^--keep must be at least 1$"):
        gc_plan(str(tmp_path), keep=0)
    plan = gc_plan(str(tmp_path), keep=1, grace_s=100.0, now=t0 + 100)
    size = {x["uri"]: x["bytes"] for x in list_versions(str(tmp_path))["versions"]}
    created = {x["uri"]: x["created_at"] for x in list_versions(str(tmp_path))["versions"]}
    name = os.path.basename
    assert plan["stage"] == "gc" and plan["keep"] == 1 and plan["grace_s"] == 100.0
    assert plan["root"] == storage.absolute(str(tmp_path))
    assert sorted(plan["delete"], key=lambda d: d["uri"]) == sorted([
        {"uri": v[k], "version": name(v[k]), "stage": st, "created_at": created[v[k]],
         "bytes": size[v[k]]} for k, st in (("e0", "ingest"), ("p0", "synth"))]
        + [{"uri": old, "partial": True, "age_s": 100, "bytes": 10}], key=lambda d: d["uri"])
    assert plan["young_partials"] == [young]
    assert {k["uri"]: k["version"] for k in plan["keep_versions"]} == {
        v[k]: name(v[k]) for k in v if k not in ("e0", "p0")}
    assert plan["counts"] == {"versions": 12, "delete_versions": 2, "delete_partials": 1,
                              "delete_leftovers": 0,
                              "delete_bytes": size[v["e0"]] + size[v["p0"]] + 10}
    later = gc_plan(str(tmp_path), keep=1, grace_s=100.0, now=t0 + 101)
    assert later["young_partials"] == [] and later["counts"]["delete_partials"] == 2


def test_gc_deletes_what_a_takedown_replaced(tmp_path):
    """`loom forget` writes a version whose lineage names the versions it replaces: gc
    deletes those even when they are among the newest or used by a survivor, and a replaced
    version that was going anyway is no error."""
    ex = storage.join(str(tmp_path), "examples")
    e1, e2, e3 = (_version(ex, "ingest", i) for i in (1, 2, 3))
    e4 = _version(ex, "ingest", 4, {"takedown": {"replaces": [e3, e1]}})
    pairs = storage.join(str(tmp_path), "pairs")
    p1 = _version(pairs, "synth", 1, {"examples": e3})
    plan = gc_plan(str(tmp_path), keep=2)
    assert {d["uri"] for d in plan["delete"]} == {e1, e2, e3}
    assert {k["uri"]: k["why"] for k in plan["keep_versions"]} == {e4: "newest 2",
                                                                   p1: "newest 2"}


def test_gc_collects_old_leftovers_of_kept_versions_only(tmp_path):
    """A kept version's temp files and `_work/` parts go once `grace_s` old (inclusive);
    younger ones may be a live writer's; a deleted version's go with it, not listed twice."""
    ex = storage.join(str(tmp_path), "examples")
    e1, e2 = _version(ex, "ingest", 1), _version(ex, "ingest", 2)
    t0 = 1_700_000_000

    def leftover(version: str, rel: str, at: int, size: int) -> str:
        path = os.path.join(version, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x" * size)
        os.utime(path, ns=(at * 10**9, at * 10**9))
        return storage.absolute(path)

    old_tmp = leftover(e2, "examples/part-00001.parquet.tmp-abc", t0, 7)
    old_work = leftover(e2, "_work/tmp/part-00002.parquet", t0, 5)
    leftover(e2, "examples/part-00003.parquet.tmp-def", t0 + 1, 3)  # 99 s old: stays
    leftover(e1, "examples/part-00004.parquet.tmp-ghi", t0, 11)  # goes with e1
    plan = gc_plan(str(tmp_path), keep=1, grace_s=100.0, now=t0 + 100)
    size = {x["uri"]: x["bytes"] for x in list_versions(str(tmp_path))["versions"]}
    assert [d["uri"] for d in plan["delete"] if not d.get("leftover")] == [e1]
    assert sorted((d["uri"], d["bytes"]) for d in plan["delete"] if d.get("leftover")) == \
        sorted([(old_tmp, 7), (old_work, 5)])
    assert plan["counts"]["delete_leftovers"] == 2
    assert plan["counts"]["delete_bytes"] == size[e1] + 7 + 5


def test_gc_keeps_what_lists_and_every_checkpoint_run_name(tmp_path):
    """Lineage values inside lists count (a stage with several inputs); each checkpoint
    run's lineage counts, not only the last one read."""
    ex = storage.join(str(tmp_path), "examples")
    e = [_version(ex, "ingest", i) for i in range(1, 6)]
    pairs = storage.join(str(tmp_path), "pairs")
    _version(pairs, "synth", 1, {"inputs": [e[0], e[1]]})
    for name, used in (("ft-00000000000000a1", e[2]), ("ft-00000000000000a2", e[3])):
        run = storage.join(str(tmp_path), "checkpoints", name)
        storage.write_bytes(storage.join(run, "lineage.json"),
                            json.dumps({"examples": used}).encode())
    assert gc_plan(str(tmp_path), keep=1)["delete"] == []
    assert gc_plan(ex, keep=1)["delete"] == []  # one root: its siblings are read too


def test_gc_keeps_the_newest_per_root_not_per_stage_name(tmp_path):
    a, b = storage.join(str(tmp_path), "a"), storage.join(str(tmp_path), "b")
    a1, a2 = _version(a, "ingest", 1), _version(a, "ingest", 2)
    b1, b2 = _version(b, "ingest", 3), _version(b, "ingest", 4)
    plan = gc_plan(str(tmp_path), keep=1)
    assert {d["uri"] for d in plan["delete"]} == {a1, b1}
    assert {k["uri"] for k in plan["keep_versions"]} == {a2, b2}


def test_gc_an_empty_partial_folder_counts_as_young(tmp_path):
    """A partial write with no file yet has no age to read: a writer may be starting."""
    ex = storage.join(str(tmp_path), "examples")
    _version(ex, "ingest", 1)
    empty = storage.join(ex, mf.version_id("ingest", ["starting"], {}))
    os.makedirs(empty)
    plan = gc_plan(ex, keep=1, grace_s=0.5)
    assert plan["young_partials"] == [storage.absolute(empty)]
    assert plan["counts"]["delete_partials"] == 0


def test_gc_keeps_a_version_whose_file_a_lineage_names(tmp_path):
    """A lineage value may name a file inside a version (a shard, a part): that version is
    used; a sibling whose name merely starts the same is not."""
    ex = storage.join(str(tmp_path), "examples")
    e1, e2, e3 = (_version(ex, "ingest", i) for i in (1, 2, 3))
    pairs = storage.join(str(tmp_path), "pairs")
    _version(pairs, "synth", 1, {"part": storage.join(e1, "rejected", "part-00000.parquet"),
                                 "like": e2 + "-copy"})
    plan = gc_plan(str(tmp_path), keep=1)
    assert {d["uri"] for d in plan["delete"]} == {e2}
    assert {k["uri"]: k["why"] for k in plan["keep_versions"]}[e1].startswith("used by")


def test_gc_deletes_a_killed_ingests_listing_after_the_grace(tmp_path):
    """An ingest killed while listing leaves its `.listing-*` folder in the output root
    (the listing is moved into its version only once the run knows it): gc treats it as
    a partial write, deleted once older than the grace period."""
    from loom.pipelines.ingest_listing import write_listing

    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        (media / f"f{i}.txt").write_text(f"text {i}")
    ex = storage.join(str(tmp_path), "examples")
    kept = _version(ex, "ingest", 1)
    old, young = (write_listing(str(media), ex).dir for _ in range(2))
    for f in os.listdir(old):
        os.utime(os.path.join(old, f), (time.time() - 48 * 3600,) * 2)
    plan = gc_plan(ex, keep=1)
    assert [d["uri"] for d in plan["delete"]] == [storage.absolute(old)]
    assert plan["young_partials"] == [storage.absolute(young)]
    gc(ex, keep=1, dry_run=False, log_line=lambda _: None)
    assert not os.path.exists(old) and os.path.isdir(young) and os.path.isdir(kept)
