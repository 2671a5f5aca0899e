"""The example specs in jobs/examples/ run as written (relative paths, from a working folder
that holds their inputs), and inputs of the wrong kind are refused before any work."""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import loom.synth.prompts as prompts_mod
import pytest
from loom.jobs.cli import app
from loom.jobs.corpus import generate_corpus
from loom.jobs.run import run_spec
from loom.jobs.spec import load_spec
from loom.pipelines.ingest import run_ingest
from loom.schemas import manifest as mf
from typer.testing import CliRunner

from tests.checkpoints import examples_spec, tiny_checkpoint

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "examples"


def _make(folder: pathlib.Path) -> dict:
    """.loom-data/media (a small corpus) and .loom-data/examples under `folder` (the cwd)."""
    generate_corpus(".loom-data", 6, 6, seed=3)
    ingest = run_ingest(".loom-data/media", ".loom-data/examples")
    return {"dir": folder, "ingest": ingest}


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A fresh working folder holding the example specs' inputs (the cwd)."""
    monkeypatch.chdir(tmp_path)
    return _make(tmp_path)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One working folder with examples, pairs and shards (the regen spec run once)."""
    folder = tmp_path_factory.mktemp("made")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        out = _make(folder)
        run_spec(load_spec(EXAMPLES / "regen-pairs.yaml"), _quiet)
    return out


def _quiet(message: str, **_) -> None:
    pass


def test_every_example_checks():
    for path in sorted(EXAMPLES.glob("*.yaml")):
        res = CliRunner().invoke(app, ["run", str(path), "--check"])
        assert res.exit_code == 0, (path.name, res.output)


def test_regen_pairs_after_a_prompt_change(data, tmp_path, monkeypatch):
    spec = load_spec(EXAMPLES / "regen-pairs.yaml")
    first = run_spec(spec, _quiet)
    assert first["reused"] == []
    from loom.synth.stage import DEFAULT_KINDS

    from tests.synth_calls import calls_needed, modalities

    examples = modalities(data["ingest"]["uri"])
    assert first["stages"]["pairs"]["llm_calls"] == calls_needed(data["ingest"]["uri"])
    # every example has one keyword call (images and texts alike)
    n = sum("keyword" in DEFAULT_KINDS.get(m, []) for m in examples)
    assert n == data["ingest"]["counts"]["examples"]
    assert first["stages"]["shards"]["counts"]["shards"] >= 1
    assert run_spec(spec, _quiet)["reused"] == ["pairs", "shards"]  # nothing changed

    prompts = tmp_path / "prompts"  # a new prompt version, as a user would add one
    shutil.copytree(prompts_mod.PROMPT_DIR, prompts)
    newest = max(prompts_mod.available()[("keyword", None)])
    text = (prompts / f"keyword.v{newest}.txt").read_text()
    (prompts / f"keyword.v{newest + 1}.txt").write_text(text + "\nPrefer short keyword queries.\n")
    monkeypatch.setattr(prompts_mod, "PROMPT_DIR", prompts)

    third = run_spec(spec, _quiet)
    pairs, shards = third["stages"]["pairs"], third["stages"]["shards"]
    assert third["reused"] == []
    assert pairs["version"] != first["stages"]["pairs"]["version"]
    total = first["stages"]["pairs"]["llm_calls"]
    assert pairs["llm_calls"] == n and pairs["counts"]["cache_hits"] == total - n  # keyword only
    _, manifest = mf.resolve_input(pairs["uri"])
    assert manifest.lineage["prompt_versions"]["keyword"] == f"keyword.v{newest + 1}"
    _, shard_manifest = mf.resolve_input(shards["uri"])
    assert shards["version"] != first["stages"]["shards"]["version"]
    assert pairs["version"] in json.dumps(shard_manifest.lineage)


@pytest.mark.slow  # three backfills on Ray: minutes on a small shared machine
def test_nightly_backfill(data, ray_session):
    spec = examples_spec(data["ingest"]["uri"])  # the tokenizer the checkpoint carries
    ckpt = tiny_checkpoint(".loom-data/checkpoints", "nightly", spec)
    nightly = load_spec(EXAMPLES / "nightly-backfill.yaml")
    first = run_spec(nightly, _quiet)
    emb = first["stages"]["embeddings"]
    assert emb["checkpoint"] == ckpt and emb["counts"]["examples"] >= 1
    assert first["stages"]["gc"]["stage"] == "gc"
    assert run_spec(nightly, _quiet)["stages"]["embeddings"]["reused"] is True

    from loom.transforms.scenes import random_scene, render_image

    rng = random.Random(7)
    (data["dir"] / ".loom-data" / "media" / "images" / "late.png").write_bytes(
        render_image(random_scene(rng), rng, side=64))
    third = run_spec(nightly, _quiet)["stages"]["embeddings"]
    assert third["version"] != emb["version"]
    assert third["counts"]["embedded"] == 1
    assert third["counts"]["examples"] == emb["counts"]["examples"] + 1


@pytest.mark.parametrize("argv,flag,holds", [
    (["synth", "--examples", ".loom-data/pairs", "--output", "OUT"], "--examples", "synth"),
    (["shard", "--input", ".loom-data/examples", "--output", "OUT"], "--input", "ingest"),
    (["train", "--shards", ".loom-data/pairs", "--output", "OUT"], "--shards", "synth"),
    (["mine", "--pairs", ".loom-data/examples", "--output", "OUT"], "--pairs", "ingest"),
    (["eval", "--pairs", ".loom-data/shards", "--output", "OUT"], "--pairs", "shard"),
    (["synth", "relabel", "--triples", ".loom-data/pairs", "--output", "OUT"], "--triples",
     "synth"),
])
def test_wrong_kind_of_input_folder_is_exit_2(made, argv, flag, holds, tmp_path, monkeypatch):
    monkeypatch.chdir(made["dir"])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, [a.replace("OUT", str(out)) for a in argv])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("loom: ")
    assert f"{flag}: " in lines[0] and f"holds {holds} output" in lines[0], lines[0]
    assert not out.exists()


def test_wrong_kind_in_a_spec_names_the_step(made, tmp_path, monkeypatch):
    monkeypatch.chdir(made["dir"])
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nworkdir: {tmp_path / 'w'}\nstages:\n"
                    "  - {stage: shard, id: s, input: .loom-data/examples}\n")
    res = CliRunner().invoke(app, ["run", str(spec)])
    assert res.exit_code == 2, res.output
    assert "stages[0].input: .loom-data/examples holds ingest output" in res.output
    assert not (tmp_path / "w" / "s").exists()
