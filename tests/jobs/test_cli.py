"""The `loom` CLI contract: help everywhere, exit 2 with one line on bad input, JSON last line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import typer
from loom.jobs.cli import app
from typer.testing import CliRunner

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMANDS = sorted(typer.main.get_command(app).commands)
RESULT_KEYS = {"stage", "version", "datasets", "counts", "reused"}


def test_every_command_is_listed():
    assert set(COMMANDS) >= {"corpus", "ingest", "synth", "shard", "train", "mine", "eval",
                             "demo", "soup", "backfill", "run", "submit", "schedule",
                             "scheduler", "ls", "inspect", "gc", "report"}


def test_top_level_help():
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help(command):
    res = CliRunner().invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def _one_line_reason(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("loom: "), lines[0]
    return lines[0]


def test_ingest_missing_folder_exits_2(tmp_path):
    missing = tmp_path / "does-not-exist"
    res = CliRunner().invoke(app, ["ingest", "--input", str(missing),
                                   "--output", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert str(missing) in _one_line_reason(res)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_synth_bogus_llm_exits_2(tmp_path):
    res = CliRunner().invoke(app, ["synth", "--examples", str(tmp_path / "examples"),
                                   "--output", str(tmp_path / "pairs"), "--llm", "bogus"])
    assert res.exit_code == 2, res.output
    _one_line_reason(res)
    assert not (tmp_path / "pairs").exists()


def test_corpus_world_rich_and_unknown(tmp_path):
    res = CliRunner().invoke(app, ["corpus", "--output", str(tmp_path / "c"), "--images", "3",
                                   "--texts", "3", "--world", "rich"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    truth = [json.loads(line) for line in
             pathlib.Path(out["datasets"]["ground_truth"]).read_text().splitlines()]
    assert sum(1 for r in truth if r.get("family") and "note" not in r) == 6  # 3 + 3 assets
    assert all(r["family"] for r in truth if "duplicate" in r.get("note", ""))
    bad = CliRunner().invoke(app, ["corpus", "--output", str(tmp_path / "d"), "--world", "x"])
    assert bad.exit_code == 2, bad.output
    assert "--world: Input should be 'simple', 'rich' or 'multimodal'" in _one_line_reason(bad)


def _loom(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "loom.jobs.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    obj = json.loads(last)
    assert isinstance(obj, dict)
    assert RESULT_KEYS <= set(obj), obj
    return obj


def test_corpus_then_ingest_last_line_is_json(tmp_path):
    corpus = _last_json(_loom("corpus", "--output", str(tmp_path / "corpus"),
                              "--images", "4", "--texts", "4"))
    assert corpus["stage"] == "corpus" and corpus["reused"] is False
    media = corpus["datasets"]["media"]
    assert pathlib.Path(media).is_dir()

    ingest = _last_json(_loom("ingest", "--input", media, "--output", str(tmp_path / "ex")))
    assert ingest["stage"] == "ingest" and ingest["reused"] is False
    assert ingest["version"].startswith("ingest-")
    c = ingest["counts"]
    assert c["listed"] == corpus["counts"]["files"]
    assert c["listed"] == c["accepted"] + c["duplicate"] + c["rejected"]
    assert set(ingest["datasets"]) >= {"examples", "rejected"}

    again = _last_json(_loom("ingest", "--input", media, "--output", str(tmp_path / "ex")))
    assert again["reused"] is True and again["version"] == ingest["version"]


def test_gemini_without_a_key_is_a_config_error(tmp_path, monkeypatch):
    """Checked in the driver before any engine starts: exit 2, one line, no traceback."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["synth", "--examples", str(tmp_path), "--output",
                                      str(tmp_path / "p"), "--llm", "gemini"])
    assert result.exit_code == 2
    assert "GEMINI_API_KEY" in result.output and "Traceback" not in result.output


def test_soup_command_writes_a_new_run(tmp_path):
    import torch
    from loom.models.checkpoint import save_checkpoint
    from loom.models.encoder import EncoderConfig, MultimodalEncoder
    from loom.schemas.spec import PreprocessingSpec

    cfg = EncoderConfig(vocab_size=50, max_text_tokens=8, image_size=16, patch_size=8, dim=16,
                        layers=1, heads=2, embed_dims=(8, 16))
    for seed, run in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        save_checkpoint(str(tmp_path), run, 3, MultimodalEncoder(cfg), None,
                        PreprocessingSpec(image_size=16, patch_size=8), cfg, {}, {})
    res = CliRunner().invoke(app, ["soup", "a", "b", "--root", str(tmp_path), "--weights", "3,1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["stage"] == "soup" and out["checkpoint"].startswith("soup-")
    assert (tmp_path / out["checkpoint"] / "model.safetensors").exists()
    bad = CliRunner().invoke(app, ["soup", "a", "nope", "--root", str(tmp_path)])
    assert bad.exit_code == 2


def test_run_with_a_bad_spec_names_field_and_line(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nworkdir: w\nstages:\n  - stage: ingest\n    id: a\n"
                    "    input: m\n    image_size: big\n")
    res = CliRunner().invoke(app, ["run", str(spec)])
    assert res.exit_code == 2
    assert "image_size" in res.output and "line 7" in res.output


@pytest.mark.parametrize("extra,field", [
    (["--config", "{sampling: nearest}"], "sampling"),
    (["--config", "{rank_range: [5, 2]}"], "rank_range"),
    (["--cross-modal", "image=-1"], "cross_modal"),
])
def test_mine_bad_config_exits_2(tmp_path, extra, field):
    res = CliRunner().invoke(app, ["mine", "--pairs", str(tmp_path / "pairs"),
                                   "--output", str(tmp_path / "triples"), *extra])
    assert res.exit_code == 2, res.output
    reason = _one_line_reason(res)
    assert "bad config" in reason and field in reason
    assert not (tmp_path / "triples").exists()


def test_key_values_one_parser_for_every_flag():
    from loom.jobs.cli import key_values
    from loom.pipelines.common import BadInput

    assert key_values(["caption=2", " image =0.5"], "--weight", float) == {
        "caption": 2.0, "image": 0.5}
    assert key_values(["A=x=y", "B="], "--env") == {"A": "x=y", "B": ""}
    for bad in ("noequals", "=3", "k=three"):
        with pytest.raises(BadInput, match=f"--weight wants KEY=NUMBER, not '{bad}'"):
            key_values([bad], "--weight", float, "KEY=NUMBER")
