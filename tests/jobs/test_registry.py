"""The stage registry: every stage reads the same config from a spec and from the CLI, and
every bad option value is exit 2 naming the option, before any work."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from loom.jobs import commands, registry
from loom.jobs.cli import app
from loom.jobs.spec import SpecError, load_spec
from typer.testing import CliRunner

# stage -> (CLI argv, the same settings as a spec step's fields). Every registered stage
# needs a row: a new stage without one fails test_every_stage_has_a_case.
CASES: dict[str, tuple[list[str], dict]] = {
    "corpus": (["corpus", "--output", "/o", "--images", "3", "--texts", "4", "--seed", "2",
                "--world", "rich"],
               {"images": 3, "texts": 4, "seed": 2, "world": "rich"}),
    "ingest": (["ingest", "--input", "/d/media", "--output", "/o", "--image-size", "32",
                "--allow-host", "a.example", "--allow-host", "b.example", "--engine", "ray"],
               {"input": "/d/media", "image_size": 32, "allow_hosts": ["a.example", "b.example"]}),
    "synth": (["synth", "--examples", "/d/ex", "--output", "/o", "--llm", "vertex", "--model", "m",
               "--base-url", "http://127.0.0.1:1", "--heldout-fraction", "0.3",
               "--max-calls", "10", "--max-tokens", "99", "--max-cost", "1.5",
               "--concurrency", "4", "--rpm", "60", "--tpm", "1000", "--script", "none",
               "--roundtrip-k", "5", "--dry-run", "--checkpoint", "pft-x/step-1",
               "--checkpoint-root", "/ck"],
              {"examples": "/d/ex", "llm": {"backend": "vertex", "model": "m",
                                            "base_url": "http://127.0.0.1:1"},
               "heldout_fraction": 0.3,
               "budget": {"max_calls": 10, "max_tokens": 99, "max_cost": 1.5},
               "limits": {"concurrency": 4, "requests_per_minute": 60, "tokens_per_minute": 1000},
               "filters": {"script": None, "roundtrip_k": 5}, "dry_run": True,
               "checkpoint": "pft-x/step-1", "checkpoint_root": "/ck"}),
    "relabel": (["synth", "relabel", "--triples", "/d/t", "--output", "/o", "--llm", "gemini",
                 "--model", "m2", "--negatives", "2", "--concurrency", "8"],
                {"triples": "/d/t", "llm": {"backend": "gemini", "model": "m2"}, "negatives": 2,
                 "limits": {"concurrency": 8}}),
    "pairs": (["pairs", "--examples", "/d/ex", "--output", "/o", "--rule", "record",
               "--rule", "av_track", "--heldout-fraction", "0.3", "--mix", "/d/p"],
              {"examples": "/d/ex", "rules": ["record", "av_track"], "heldout_fraction": 0.3,
               "mix": ["/d/p"]}),
    "shard": (["shard", "--input", "/d/p", "--output", "/o", "--rows-per-shard", "64", "--seed",
               "1", "--target-mb", "2.5", "--weight", "caption=2", "--weight", "image=0.5"],
              {"input": "/d/p", "rows_per_shard": 64, "seed": 1, "target_mb": 2.5,
               "weights": {"caption": 2, "image": 0.5}}),
    "train": (["train", "--shards", "/d/s", "--output", "/o", "--stage", "ft", "--init",
               "pft-x/step-1", "--init-root", "/ck", "--config", "{warmup_steps: 3, epochs: 9}",
               "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--temperature", "0.1",
               "--learn-temperature", "--workers", "2", "--no-resume", "--batching", "aligned",
               "--bucket-weight", "caption/image=2", "--cache-chunk", "4",
               "--grad-checkpointing", "--no-cross-worker-negatives", "--dim", "32",
               "--layers", "1", "--heads", "2", "--embed-dims", "16,32"],
              {"shards": "/d/s", "train_stage": "ft", "init": "pft-x/step-1", "init_root": "/ck",
               "config": {"epochs": 2, "batch_size": 8, "lr": 0.01, "temperature": 0.1,
                          "learn_temperature": True, "warmup_steps": 3,
                          "batching": "aligned", "bucket_weights": {"caption/image": 2},
                          "cache_chunk": 4, "grad_checkpointing": True,
                          "cross_worker_negatives": False, "dim": 32, "layers": 1,
                          "heads": 2, "embed_dims": [16, 32]},
               "workers": 2, "resume": False}),
    "export": (["export", "pft-x/step-1", "--checkpoint-root", "/ck", "--output", "/o",
                "--format", "onnx"],
               {"checkpoint": "pft-x/step-1", "checkpoint_root": "/ck", "format": "onnx"}),
    "soup": (["soup", "a", "b", "--root", "/ck", "--weights", "3,1", "--output", "/o"],
             {"checkpoints": ["a", "b"], "root": "/ck", "weights": [3, 1]}),
    "mine": (["mine", "--pairs", "/d/p", "--output", "/o", "--checkpoint", "c1",
              "--checkpoint-root", "/ck", "--corpus", "/d/ex", "--config",
              "{sampling: range, rank_range: [2, 20], negatives: 7}", "--negatives", "2",
              "--cross-modal", "image=1,text=1", "--cache", "/d/cache"],
             {"pairs": "/d/p", "checkpoint": "c1", "checkpoint_root": "/ck", "corpus": "/d/ex",
              "config": {"sampling": "range", "rank_range": [2, 20], "negatives": 2,
                         "cross_modal": {"image": 1, "text": 1}}, "cache": "/d/cache"}),
    "eval": (["eval", "--pairs", "/d/p", "--output", "/o", "--checkpoint", "c1",
              "--checkpoint-root", "/ck", "--ground-truth", "/d/gt.jsonl", "--seed", "3",
              "--max-queries", "50", "--dims", "16,32", "--cache", "/d/cache"],
             {"pairs": "/d/p", "checkpoint": "c1", "checkpoint_root": "/ck",
              "ground_truth": "/d/gt.jsonl", "seed": 3, "max_queries": 50, "dims": [16, 32],
              "cache": "/d/cache"}),
    "backfill": (["backfill", "--input", "gs://b/media", "--output", "gs://b/emb",
                  "--checkpoint", "c1", "--checkpoint-root", "gs://b/ck", "--dim", "16",
                  "--faiss-index", "--engine", "ray"],
                 {"input": "gs://b/media", "checkpoint": "c1", "checkpoint_root": "gs://b/ck",
                  "dim": 16, "faiss_index": True}),
    "report": (["report", "/w", "--output", "/w/r.html"], {"workdir": "/w"}),
    "gc": (["gc", "/w", "--keep", "5", "--no-dry-run", "--yes", "--grace-hours", "1.5"],
           {"root": "/w", "keep": 5, "dry_run": False, "yes": True, "grace_hours": 1.5}),
    "forget": (["forget", "a" * 64, "gs://b/media/x.jpg", "--workdir", "/w"],
               {"targets": ["a" * 64, "gs://b/media/x.jpg"], "workdir": "/w"}),
}


@pytest.fixture
def captured(monkeypatch):
    """Every stage's `run` replaced by one that records (config, context) and does nothing."""
    calls: list[tuple] = []
    for name, defn in list(registry.load().items()):
        def run(cfg, ctx, name=name):
            calls.append((name, cfg, ctx))
            return {"stage": name, "version": None, "datasets": {}, "counts": {}, "reused": False}
        monkeypatch.setitem(registry.STAGES, name, dataclasses.replace(defn, run=run))
    return calls


def _cli(argv: list[str]):
    return CliRunner().invoke(app, argv)


def _reason(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_every_stage_has_a_case():
    assert set(registry.load()) == set(CASES)


def test_every_stage_is_a_command_and_a_step_type():
    from loom.jobs.spec import STAGE_KINDS

    assert set(STAGE_KINDS) == set(registry.load())
    for defn in registry.load().values():
        res = _cli([*defn.command, "--help"])
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("stage", sorted(CASES))
def test_spec_and_cli_make_the_same_config(stage, captured):
    argv, fields = CASES[stage]
    res = _cli(argv)
    assert res.exit_code == 0, res.output
    (name, cli_cfg, ctx), = captured
    assert name == stage
    spec = load_spec(yaml.safe_dump({"name": "t", "workdir": "/w", "stages": [
        {"stage": stage, "id": "s", **fields}]}))
    defn = registry.get(stage)
    spec_cfg = defn.config_of(spec.stages[0])
    assert spec_cfg == cli_cfg
    assert spec_cfg.model_dump() == cli_cfg.model_dump()
    assert isinstance(cli_cfg, defn.config)
    if "--engine" in argv:
        assert ctx.engine.kind.value == argv[argv.index("--engine") + 1]


def test_cli_defaults_are_the_config_defaults(captured):
    """Options not given leave the config's own defaults (not typer's)."""
    assert _cli(["train", "--shards", "/s", "--output", "/o"]).exit_code == 0
    assert _cli(["mine", "--pairs", "/p", "--output", "/o"]).exit_code == 0
    train, mine = captured[0][1], captured[1][1]
    defs = registry.load()
    assert train == defs["train"].config(shards="/s")
    assert mine == defs["mine"].config(pairs="/p")
    assert train.model_fields_set == {"shards"}


# --- one validation: bad values are exit 2 with the option's name, before any work -----

# Numeric options where 0 is a valid value (everything else must refuse 0 too).
ZERO_OK = {"--seed", "--heldout-fraction", "--max-calls", "--max-tokens", "--max-cost",
           "--grace-hours", "mine --negatives", "--cache-chunk"}  # mine: cross-modal only; cache-chunk 0: off


def _numeric_options() -> list[tuple[str, str]]:
    out = []
    for name, defn in sorted(registry.load().items()):
        for p, _, _ in commands._field_params(defn):
            if p.kind == "value" and p.type in (int, float):
                out.append((name, p.flag))
    return out


NUMERIC = _numeric_options()


def test_numeric_options_are_found():
    flags = {flag for _, flag in NUMERIC}
    assert {"--rows-per-shard", "--epochs", "--batch-size", "--images", "--texts", "--lr",
            "--workers", "--keep", "--concurrency", "--dim", "--max-queries"} <= flags
    assert len(NUMERIC) >= 25


@pytest.mark.parametrize("stage,flag", NUMERIC)
def test_numeric_option_below_range_is_exit_2(stage, flag, captured, tmp_path):
    argv = [a.replace("/o", str(tmp_path / "out")) for a in CASES[stage][0]]
    zero_ok = flag in ZERO_OK or f"{stage} {flag}" in ZERO_OK
    for value in ("-1", "-5") + (() if zero_ok else ("0",)):
        res = _cli([*argv, flag, value])
        assert res.exit_code == 2, (flag, value, res.output)
        reason = _reason(res)
        # jobs/errors.py: "loom: <command>: <reason>"
        assert reason.startswith(f"loom: {registry.get(stage).command[-1]}: bad config: ") \
            and flag in reason, reason
    assert captured == []  # refused before the stage ran
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stage,flag", [(s, f) for s, f in NUMERIC
                                        if f in ZERO_OK or f"{s} {f}" in ZERO_OK])
def test_zero_is_accepted_where_it_means_something(stage, flag, captured):
    res = _cli([*CASES[stage][0], flag, "0"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("argv,flag", [
    (["corpus", "--output", "OUT", "--images", "-5"], "--images"),
    (["train", "--shards", "/s", "--output", "OUT", "--epochs", "-1"], "--epochs"),
    (["train", "--shards", "/s", "--output", "OUT", "--batch-size", "0"], "--batch-size"),
    (["shard", "--input", "/p", "--output", "OUT", "--rows-per-shard", "-5"], "--rows-per-shard"),
    (["shard", "--input", "/p", "--output", "OUT", "--weight", "caption=-1"], "--weight"),
    (["eval", "--pairs", "/p", "--output", "OUT", "--dims", "16,0"], "--dims"),
    (["soup", "a", "b", "--output", "OUT", "--weights", "1"], "--weights"),
    (["demo", "--workdir", "OUT", "--images", "0"], "--images"),
    (["demo", "--workdir", "OUT", "--pft-epochs", "-1"], "--pft-epochs"),
    (["ingest", "--input", "s3://bucket/media", "--output", "OUT"], "--input"),
    (["backfill", "--input", "/m", "--output", "OUT", "--checkpoint-root", "s3://b/ck"],
     "--checkpoint-root"),
    (["ingest", "--input", "/m", "--output", "s3://bucket/out"], "--output"),
    (["mine", "--pairs", "hdfs://x/p", "--output", "OUT"], "--pairs"),
    (["train", "--shards", "/s", "--output", "OUT", "--epochs", "many"], "--epochs"),
    (["schedule", "x.yaml", "--cron", "0 3 * * *", "--workers", "0"], "--workers"),
    (["scheduler", "x.yaml", "--poll-s", "0"], "--poll-s"),
    (["submit", "x.yaml", "--address", "http://h:8265", "--timeout", "0"], "--timeout"),
])
def test_bad_values_named_before_any_work(argv, flag, captured, tmp_path):
    out = str(tmp_path / "out")
    res = _cli([a.replace("OUT", out) for a in argv])
    assert res.exit_code == 2, res.output
    assert flag in res.output, res.output
    assert captured == []
    assert not (tmp_path / "out").exists()


def test_unknown_scheme_in_a_spec_names_field_and_line():
    text = ("name: t\nworkdir: /w\nstages:\n  - stage: ingest\n    id: a\n"
            "    input: s3://bucket/media\n")
    with pytest.raises(SpecError, match=r"stages\[0\]\.input: .*unsupported storage scheme.*"
                                        r"\(line 6\)"):
        load_spec(text)
    with pytest.raises(SpecError, match=r"stages\[0\]\.output: .*\(line 7\)"):
        load_spec(text.replace("s3://bucket/media", "/m") + "    output: s3://b/o\n")


# --- spec steps for every stage: wiring and --check ------------------------------------

WIRED = """\
name: wired
workdir: /w
stages:
  - {stage: corpus, id: corpus, images: 4, texts: 4}
  - {stage: ingest, id: ingest, input: "${corpus}"}
  - {stage: synth, id: synth, examples: "${ingest}"}
  - {stage: shard, id: shard, input: "${synth}"}
  - {stage: train, id: pft, shards: "${shard}"}
  - {stage: train, id: pft2, shards: "${shard}", config: {seed: 1}}
  - {stage: soup, id: soup, checkpoints: ["${pft}", "${pft2}"]}
  - {stage: mine, id: mine, pairs: "${synth}", checkpoint: "${soup}", corpus: "${ingest}"}
  - {stage: relabel, id: relabel, triples: "${mine}"}
  - {stage: shard, id: shard_ft, input: "${relabel}"}
  - {stage: train, id: ft, shards: "${shard_ft}", train_stage: ft, init: "${soup}"}
  - {stage: eval, id: eval, pairs: "${synth}", checkpoint: "${ft}", ground_truth: "${corpus}"}
  - {stage: backfill, id: backfill, input: "${corpus}", checkpoint: "${ft}"}
  - {stage: report, id: report}
  - {stage: gc, id: gc, root: "${backfill}", keep: 2}
  - {stage: export, id: export, checkpoint: "${ft}"}
  - {stage: pairs, id: natural, examples: "${ingest}", mix: ["${synth}"]}
  - {stage: forget, id: forget, targets: ["gs://b/media/x.jpg"]}
"""


def test_every_stage_wires_in_a_spec():
    spec = load_spec(WIRED)
    assert {s.stage for s in spec.stages} == set(registry.load())


@pytest.mark.parametrize("old,new,path,words", [
    ('relabel, id: relabel, triples: "${mine}"', 'relabel, id: relabel, triples: "${synth}"',
     "stages[8].triples", ["synth step", "expected mine"]),
    ('checkpoints: ["${pft}", "${pft2}"]', 'checkpoints: ["${pft}", "${shard}"]',
     "stages[6].checkpoints", ["shard step"]),
    ('root: "${backfill}"', 'root: "${later}"', "stages[14].root", ["no step"]),
    ("keep: 2", "keep: 0", "stages[14].keep", ["greater than or equal to 1"]),
    ('input: "${corpus}"}', 'input: "${corpus}", image_size: 4}', "stages[1].image_size", []),
])
def test_wiring_and_bounds_errors_in_a_spec(old, new, path, words, tmp_path):
    text = WIRED.replace(old, new, 1)
    assert text != WIRED
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if new in ln)
    with pytest.raises(SpecError) as info:
        load_spec(text)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and msg.endswith(f"(line {line})"), msg
    for w in words:
        assert w in msg, msg
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    res = _cli(["run", str(spec), "--check"])
    assert res.exit_code == 2 and path in res.output


def test_check_runs_nothing(tmp_path, captured):
    spec = tmp_path / "wired.yaml"
    spec.write_text(WIRED.replace("/w", str(tmp_path / "work")))
    res = _cli(["run", str(spec), "--check"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["stage"] == "check" and out["ok"] is True
    assert [s["id"] for s in out["steps"]] == [s.id for s in load_spec(WIRED).stages]
    assert captured == [] and not (tmp_path / "work").exists()


def test_refs_resolve_to_what_earlier_steps_produced(captured, tmp_path):
    """Through run_spec with recording stages: each `${ref}` becomes the named result."""
    from loom.jobs.run import run_steps

    results = {
        "corpus": {"uri": "/c/v", "datasets": {"media": "/c/v/media",
                                               "ground_truth": "/c/v/gt.jsonl"}},
        "train": {"checkpoint": "pft-1/step-3", "checkpoint_root": "/w/pft"},
        "soup": {"checkpoint": "soup-1/step-0", "checkpoint_root": "/w/soup"},
    }
    for name, defn in list(registry.STAGES.items()):
        def run(cfg, ctx, name=name):
            captured.append((name, cfg, ctx))
            return {"uri": f"/{name}/version", **results.get(name, {})}
        registry.STAGES[name] = dataclasses.replace(defn, run=run)
    spec = load_spec(WIRED.replace("/w", str(tmp_path / "w")))
    out = run_steps(spec, log=lambda m: None)
    assert list(out) == [s.id for s in spec.stages]
    cfg = {c[2].default_output.rsplit("/", 1)[-1]: c[1] for c in captured}
    assert cfg["ingest"].input == "/c/v/media"
    assert cfg["synth"].examples == "/ingest/version"
    assert cfg["soup"].checkpoints == ["pft-1/step-3", "pft-1/step-3"]
    assert cfg["soup"].root == "/w/pft"
    assert (cfg["mine"].checkpoint, cfg["mine"].checkpoint_root) == ("soup-1/step-0", "/w/soup")
    assert (cfg["ft"].init, cfg["ft"].init_root) == ("soup-1/step-0", "/w/soup")
    assert cfg["eval"].ground_truth == "/c/v/gt.jsonl"
    assert cfg["backfill"].input == "/c/v/media"
    assert cfg["gc"].root == str(tmp_path / "w" / "backfill")
    by_name = {c[0]: c for c in captured}
    assert by_name["report"][2].workdir == str(tmp_path / "w")  # report: the spec's workdir
    assert by_name["forget"][2].workdir == str(tmp_path / "w")  # forget: the spec's too
    assert by_name["forget"][1].targets == ["gs://b/media/x.jpg"]
