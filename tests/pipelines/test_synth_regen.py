"""Regeneration pays only for what changed, and `synth diff` says what that was."""

from __future__ import annotations

import shutil

import loom.synth.prompts as prompts_mod
from loom.jobs.corpus import generate_corpus
from loom.pipelines.ingest import run_ingest
from loom.pipelines.synth import run_synth
from loom.pipelines.synth_diff import diff_synth
from loom.schemas import manifest as mf


def test_changed_prompt_pays_only_for_its_kind(tmp_path, monkeypatch):
    generate_corpus(str(tmp_path / "c"), 6, 6, seed=11, bad_files=False)
    ex = run_ingest(str(tmp_path / "c" / "media"), str(tmp_path / "ex"))
    first = run_synth(ex["uri"], str(tmp_path / "pairs"))
    n = ex["counts"]["examples"]
    images = ex["counts"]["examples.image"]
    # by default images have three kinds (caption, keyword, describe), texts two
    assert first["llm_calls"] == 2 * n + images

    prompts = tmp_path / "prompts"
    shutil.copytree(prompts_mod.PROMPT_DIR, prompts)
    v2 = (prompts / "keyword.v2.txt").read_text()
    (prompts / "keyword.v3.txt").write_text(v2 + "\nPrefer short keyword queries.\n")
    monkeypatch.setattr(prompts_mod, "PROMPT_DIR", prompts)

    second = run_synth(ex["uri"], str(tmp_path / "pairs"))
    assert second["version"] != first["version"]
    assert second["llm_calls"] == n  # "keyword" is a kind of both images and texts
    assert second["counts"]["cache_hits"] == n + images
    vdir, manifest = mf.resolve_input(second["uri"])
    assert manifest.lineage["previous"] == first["uri"]
    assert manifest.lineage["prompt_versions"]["keyword"] == "keyword.v3"

    diff = diff_synth(first["uri"], second["uri"])
    total = diff["counts"]
    assert total["added"] == total["removed"] == 0
    assert total["rewritten"] + total["unchanged"] == first["counts"]["pairs"]
    assert set(diff["kinds"]) == {"caption", "keyword", "question", "describe"}
    assert diff["kinds"]["caption"]["rewritten"] == 0  # untouched kinds are byte-identical
    assert run_synth(ex["uri"], str(tmp_path / "pairs"))["reused"] is True

    from loom.jobs.cli import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["synth", "diff", first["uri"], second["uri"]])
    assert res.exit_code == 0, res.output
    assert '"stage": "synth_diff"' in res.output.strip().splitlines()[-1]
