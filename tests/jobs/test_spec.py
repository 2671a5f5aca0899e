"""Job specs: loading, errors that name the field and the YAML line, references, safety;
plus one slow end-to-end run of a whole chain from a spec (and its fully reused rerun)."""

from __future__ import annotations

import pathlib
import textwrap

import pydantic
import pytest
from loom.jobs.spec import (
    EvalStep,
    IngestStep,
    JobSpec,
    SpecError,
    TrainStep,
    load_spec,
    ref_target,
)
from loom.pipelines.runner import Engine
from loom.pipelines.train import TrainStage

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "jobs" / "examples" / "demo.yaml"

VALID = textwrap.dedent("""\
    name: small
    workdir: /tmp/loom-spec-test
    engine: ray
    stages:
      - stage: ingest
        id: ingest
        input: /data/media
      - stage: synth
        id: synth
        examples: ${ingest}
      - stage: shard
        id: shard_pft
        input: ${synth}
        rows_per_shard: 64
      - stage: train
        id: pft
        shards: ${shard_pft}
        train_stage: pft
        config:
          epochs: 1
          lr: 0.001
      - stage: mine
        id: mine
        pairs: ${synth}
        checkpoint: ${pft}
      - stage: shard
        id: shard_ft
        input: ${mine}
      - stage: train
        id: ft
        shards: ${shard_ft}
        train_stage: ft
        init: ${pft}
      - stage: eval
        id: eval
        pairs: ${synth}
        checkpoint: ${ft}
        ground_truth: /data/ground_truth.jsonl
    """)


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def expect_error(text: str, path: str, needle: str, *words: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    assert msg.endswith(f"(line {line_of(text, needle)})"), msg
    assert info.value.line == line_of(text, needle)
    for w in words:
        assert w in msg, msg
    return info.value


def test_valid_spec_loads():
    spec = load_spec(VALID)
    assert spec.name == "small" and spec.engine is Engine.RAY
    assert [s.id for s in spec.stages] == ["ingest", "synth", "shard_pft", "pft", "mine",
                                           "shard_ft", "ft", "eval"]
    assert isinstance(spec.stages[0], IngestStep) and spec.stages[0].image_size == 48
    pft = spec.stages[3]
    assert isinstance(pft, TrainStep) and pft.train_stage is TrainStage.PFT
    assert pft.config.epochs == 1 and pft.config.batch_size == 64
    assert ref_target(spec.stages[6].init) == "pft"
    assert isinstance(spec.stages[7], EvalStep)
    assert spec.stages[0].output_root(spec.workdir) == "/tmp/loom-spec-test/ingest"
    with pytest.raises(pydantic.ValidationError):
        spec.stages[0].id = "other"  # frozen


def test_example_file_loads():
    spec = load_spec(EXAMPLE)
    assert spec == load_spec(str(EXAMPLE)) == load_spec(EXAMPLE.read_text())
    assert [s.stage for s in spec.stages] == ["ingest", "synth", "shard", "train", "mine",
                                              "shard", "train", "eval"]


def test_bad_type_names_field_and_line():
    text = VALID.replace("lr: 0.001", "lr: fast")
    expect_error(text, "stages[3].config.lr", "lr: fast", "valid number")


def test_unknown_field():
    text = VALID.replace("rows_per_shard: 64", "rows_per_shard: 64\n    colour: blue")
    expect_error(text, "stages[2].colour", "colour: blue", "Extra inputs")
    text = VALID.replace("engine: ray", "engine: ray\nretries: 3")
    expect_error(text, "retries", "retries: 3")


def test_unknown_stage_kind():
    text = VALID.replace("stage: mine", "stage: dig")
    expect_error(text, "stages[4].stage", "stage: dig", "dig")


def test_missing_field_points_at_its_step():
    text = VALID.replace("    input: /data/media\n", "")
    expect_error(text, "stages[0].input", "- stage: ingest", "Field required")


def test_bad_enum_value():
    text = VALID.replace("train_stage: ft", "train_stage: warmup")
    expect_error(text, "stages[6].train_stage", "train_stage: warmup")


def test_forward_reference():
    text = VALID.replace("pairs: ${synth}\n    checkpoint: ${pft}",
                         "pairs: ${synth}\n    checkpoint: ${ft}")
    expect_error(text, "stages[4].checkpoint", "checkpoint: ${ft}", "later step")


def test_unknown_reference():
    text = VALID.replace("examples: ${ingest}", "examples: ${nowhere}")
    expect_error(text, "stages[1].examples", "examples: ${nowhere}", "no step")


def test_wrong_kind_reference():
    text = VALID.replace("shards: ${shard_ft}", "shards: ${mine}")
    expect_error(text, "stages[6].shards", "shards: ${mine}", "mine step", "shard")
    text = VALID.replace("init: ${pft}", "init: ${shard_pft}")
    expect_error(text, "stages[6].init", "init: ${shard_pft}", "expected train")


def test_partial_reference_is_rejected():
    text = VALID.replace("examples: ${ingest}", "examples: /x/${ingest}/y")
    expect_error(text, "stages[1].examples", "examples: /x/", "whole value")


def test_duplicate_id():
    text = VALID.replace("id: shard_ft", "id: shard_pft").replace("${shard_ft}", "${shard_pft}")
    with pytest.raises(SpecError) as info:
        load_spec(text)
    lines = [i for i, line in enumerate(text.splitlines(), 1) if line.strip() == "id: shard_pft"]
    assert len(lines) == 2
    assert str(info.value) == f"stages[5].id: duplicate step id 'shard_pft' (line {lines[1]})"


def test_literal_checkpoint_needs_its_root():
    text = VALID.replace("checkpoint: ${ft}", "checkpoint: pft-abc/step-1")
    expect_error(text, "stages[7].checkpoint_root", "- stage: eval", "checkpoint_root")
    ok = text.replace("checkpoint: pft-abc/step-1",
                      "checkpoint: pft-abc/step-1\n    checkpoint_root: /ckpts")
    assert load_spec(ok).stages[7].checkpoint_root == "/ckpts"


def test_invalid_step_id():
    text = VALID.replace("id: mine", "id: ../escape")
    expect_error(text, "stages[4].id", "id: ../escape")


def test_yaml_syntax_error_has_line():
    text = VALID.replace("rows_per_shard: 64", "rows_per_shard: [64")
    with pytest.raises(SpecError, match=r"\(line \d+\)"):
        load_spec(text)


def test_not_a_mapping():
    with pytest.raises(SpecError, match="mapping"):
        load_spec("- just\n- a list\n")


def test_python_tag_rejected_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    for payload in (f'!!python/object/apply:os.system ["touch {marker}"]',
                    f'!!python/object/apply:subprocess.call [["touch", "{marker}"]]'):
        text = VALID.replace("name: small", f"name: {payload}")
        with pytest.raises(SpecError) as info:
            load_spec(text)
        assert info.value.line == 1, str(info.value)
        text = VALID.replace("input: /data/media", f"input: {payload}")
        with pytest.raises(SpecError):
            load_spec(text)
    assert not marker.exists()


def test_programmatic_spec_checks_references():
    with pytest.raises(ValueError, match="later step"):
        JobSpec(name="x", workdir="/tmp/x", stages=[
            {"stage": "synth", "id": "synth", "examples": "${ingest}"},
            {"stage": "ingest", "id": "ingest", "input": "/data"},
        ])


# --- slow: the whole chain from a spec --------------------------------------------------

E2E = """\
name: e2e
workdir: {workdir}
engine: beam
stages:
  - {{stage: ingest, id: ingest, input: {media}}}
  - {{stage: synth, id: synth, examples: "${{ingest}}"}}
  - {{stage: shard, id: shard_pft, input: "${{synth}}", rows_per_shard: 64}}
  - stage: train
    id: pft
    shards: ${{shard_pft}}
    train_stage: pft
    config: {{epochs: 1, batch_size: 16}}
  - {{stage: mine, id: mine, pairs: "${{synth}}", checkpoint: "${{pft}}"}}
  - {{stage: shard, id: shard_ft, input: "${{mine}}", rows_per_shard: 64}}
  - stage: train
    id: ft
    shards: ${{shard_ft}}
    train_stage: ft
    init: ${{pft}}
    config: {{epochs: 1, batch_size: 16, warmup_steps: 2}}
  - stage: eval
    id: eval
    pairs: ${{synth}}
    checkpoint: ${{ft}}
    ground_truth: {truth}
"""


@pytest.mark.slow
def test_spec_end_to_end_and_rerun(tmp_path, ray_session):
    import json

    from loom.jobs.corpus import generate_corpus
    from loom.jobs.run import run_spec

    corpus = tmp_path / "corpus"
    generate_corpus(str(corpus), 40, 40, seed=0)
    spec = load_spec(E2E.format(workdir=tmp_path / "work", media=corpus / "media",
                                truth=corpus / "ground_truth.jsonl"))
    ids = [s.id for s in spec.stages]
    first = run_spec(spec, log=lambda m: None)
    assert first["stage"] == "run" and first["name"] == "e2e"
    assert "text->image" in open(first["report"]).read()
    assert list(first["stages"]) == ids
    assert first["reused"] == []
    assert first["stages"]["ingest"]["uri"].startswith(str(tmp_path / "work" / "ingest"))
    # ft started from pft's checkpoint
    ft = first["stages"]["ft"]
    lineage = json.loads((pathlib.Path(ft["checkpoint_root"]) / ft["version"]
                          / "lineage.json").read_text())
    assert lineage["init"] == first["stages"]["pft"]["checkpoint"]
    assert set(first["eval"]) >= {"text->image", "text->text"}

    second = run_spec(spec, log=lambda m: None)
    assert second["reused"] == ids
    for i in ids:
        assert second["stages"][i]["version"] == first["stages"][i]["version"], i
    assert second["eval"] == first["eval"]


def test_readme_example_spec_loads():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parents[2] / "README.md").read_text()
    spec = load_spec(re.search(r"```yaml\n(.*?)```", readme, re.S).group(1))
    assert [s.stage for s in spec.stages][-1] == "eval"


def test_beam_options_reach_every_beam_stage():
    from loom.pipelines.engine import BeamOptions, EngineOptions

    spec = load_spec(VALID.replace("workdir:", "beam_options:\n  runner: DataflowRunner\n"
                                        "  project: my-proj\n  region: europe-west4\n"
                                        "  temp_location: gs://b/tmp\n  use_public_ips: false\n"
                                        "  save_main_session: true\nworkdir:", 1))
    assert spec.beam_options["runner"] == "DataflowRunner"
    assert BeamOptions().args(2)[0] == "--runner=FnApiRunner"  # none given: the local default
    opts = spec.engine_options()  # what every step of this spec is handed
    assert opts == EngineOptions(kind=Engine.RAY, beam=BeamOptions(options=spec.beam_options))
    assert opts.beam.args(2) == ["--runner=DataflowRunner", "--project=my-proj",
                                 "--region=europe-west4", "--temp_location=gs://b/tmp",
                                 "--no_use_public_ips", "--save_main_session"]
    tuned = BeamOptions(options={"direct_num_workers": 1})  # DirectRunner flags can be tuned
    assert "--direct_num_workers=1" in tuned.args(2)
    expect_error(VALID.replace("workdir:", "beam_options:\n  runner: [1]\nworkdir:", 1),
                 "beam_options.runner.str", "runner: [1]")


class _Echo:
    """A stage that writes its input rows back (for the engine options test)."""

    import pyarrow as _pa

    input_schema = _pa.schema([("x", _pa.int64())])
    resources = None

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        pass

    def process_batch(self, batch):
        return {"echo": self._pa.Table.from_batches([batch])}


def test_beam_options_reach_the_pipeline(tmp_path, monkeypatch):
    """The options object handed to run_stage is what the Beam pipeline is built with."""
    import apache_beam as beam
    from loom.pipelines.engine import BeamOptions, EngineOptions
    from loom.pipelines.runner import StageTask, merge_results, row_items, run_stage

    seen: list[dict] = []
    real = beam.Pipeline

    def spy(options=None, **kw):
        seen.append(options.get_all_options())
        return real(options=options, **kw)

    monkeypatch.setattr(beam, "Pipeline", spy)
    opts = EngineOptions(beam=BeamOptions(options={"direct_num_workers": 1,
                                                   "job_name": "loom-opts"}))
    task = StageTask(_Echo, str(tmp_path / "v"))
    results = run_stage(opts, task, row_items([{"x": i} for i in range(5)], 2))
    assert sum(f.rows for f in merge_results(results)[0]["echo"]) == 5
    assert len(seen) == 1
    assert seen[0]["job_name"] == "loom-opts" and seen[0]["direct_num_workers"] == 1


def test_engine_adapters_do_not_import_the_dispatcher():
    """pipelines/runner.py loads the adapters by name; they must not import it back."""
    import ast

    from loom.pipelines import runner

    root = pathlib.Path(__file__).resolve().parents[2] / "pipelines"
    for path in (root / "beam" / "runner.py", root / "ray" / "runner.py", root / "engine.py",
                 root / "work.py"):
        modules = {n.module for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(ast.parse(path.read_text()))
                    if isinstance(n, ast.Import) for a in n.names}
        assert "loom.pipelines.runner" not in modules, path
    assert set(runner.ADAPTERS) == set(runner.Engine)
