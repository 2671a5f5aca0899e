"""Typed job specs: a YAML list of stages, each naming its inputs literally or by `${step id}`.

A spec is data only: it is read with `yaml.safe_load` (no Python tags), validated by pydantic
(frozen models, unknown fields rejected), and its references are checked before anything
runs. Every error is a `SpecError` whose message names the field path and the YAML line:

    stages[2].config.lr: Input should be a valid number (line 14)
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from loom.pipelines.runner import Engine
from loom.pipelines.train import TrainConfig, TrainStage
from loom.schemas import storage
from loom.synth.client import LLMConfig
from loom.transforms.mining import MiningConfig

REF = re.compile(r"^\$\{([A-Za-z0-9][A-Za-z0-9_-]*)\}$")
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # also a folder name under workdir


class SpecError(ValueError):
    """A spec that does not load: the message names the field path and the YAML line."""

    def __init__(self, message: str, path: str = "", line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}" + (f" (line {line})" if line else ""))


def ref_target(value: str | None) -> str | None:
    """The step id a `${id}` value names, or None for a literal."""
    if value is None:
        return None
    m = REF.match(value)
    return m.group(1) if m else None


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    output: str | None = None  # default: <workdir>/<id>

    def output_root(self, workdir: str) -> str:
        return storage.absolute(self.output) if self.output else storage.join(
            storage.absolute(workdir), self.id)


class IngestStep(_Step):
    stage: Literal["ingest"]
    input: str
    image_size: int = Field(48, ge=8, le=1024)


class SynthStep(_Step):
    stage: Literal["synth"]
    examples: str
    llm: LLMConfig = LLMConfig()
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)


class ShardStep(_Step):
    stage: Literal["shard"]
    input: str
    rows_per_shard: int = Field(512, ge=1)
    target_mb: float | None = Field(None, gt=0)
    weights: dict[str, float] = {}
    seed: int = 0


class TrainStep(_Step):
    stage: Literal["train"]
    shards: str
    train_stage: TrainStage
    init: str | None = None  # `${train step}` or a literal checkpoint id
    init_root: str | None = None  # for a literal `init` (default: this step's output)
    config: TrainConfig = TrainConfig()
    workers: int = Field(1, ge=1)


class MineStep(_Step):
    stage: Literal["mine"]
    pairs: str
    checkpoint: str  # `${train step}` or a literal checkpoint id (+ checkpoint_root)
    checkpoint_root: str | None = None
    config: MiningConfig = MiningConfig()


class EvalStep(_Step):
    stage: Literal["eval"]
    pairs: str
    checkpoint: str
    checkpoint_root: str | None = None
    ground_truth: str | None = None
    seed: int = 0
    max_queries: int = Field(2000, ge=1)


Stage = Annotated[Union[IngestStep, SynthStep, ShardStep, TrainStep, MineStep, EvalStep],
                  Field(discriminator="stage")]
STAGE_KINDS = ("ingest", "synth", "shard", "train", "mine", "eval")

# (stage kind, field) -> the step kinds a `${ref}` there may name.
REF_KINDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("synth", "examples"): ("ingest",),
    ("shard", "input"): ("synth", "mine"),
    ("train", "shards"): ("shard",),
    ("train", "init"): ("train",),
    ("mine", "pairs"): ("synth",),
    ("mine", "checkpoint"): ("train",),
    ("eval", "pairs"): ("synth",),
    ("eval", "checkpoint"): ("train",),
}
# Literal checkpoints need their root; a `${train}` reference carries it.
ROOT_OF = {("mine", "checkpoint"): "checkpoint_root", ("eval", "checkpoint"): "checkpoint_root",
           ("train", "init"): "init_root"}


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    workdir: str
    engine: Engine = Engine.BEAM
    # Beam pipeline options for every Beam stage (Dataflow: runner, project, region,
    # temp_location, sdk_container_image, ...); DirectRunner flags when none given.
    beam_options: dict[str, str | int | float | bool | list[str]] = {}
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> JobSpec:
        if not (info.context or {}).get("defer_references"):
            problems = reference_errors(self)
            if problems:
                loc, msg = problems[0]
                raise ValueError(f"{format_loc(loc)}: {msg}")
        return self

    def step(self, step_id: str) -> _Step:
        return next(s for s in self.stages if s.id == step_id)


def reference_errors(spec: JobSpec) -> list[tuple[tuple, str]]:
    """(loc, message) per bad id or reference, in spec order."""
    problems: list[tuple[tuple, str]] = []
    seen: dict[str, str] = {}  # id -> stage kind, earlier steps only
    for i, step in enumerate(spec.stages):
        if step.id in seen:
            problems.append((("stages", i, "id"), f"duplicate step id {step.id!r}"))
        for (kind, field), allowed in REF_KINDS.items():
            if kind != step.stage:
                continue
            value = getattr(step, field)
            target = ref_target(value)
            if value is not None and target is None and "${" in value:
                problems.append((("stages", i, field),
                                 f"{value!r}: a reference is the whole value, `${{step id}}`"))
            elif target is not None:
                if target not in seen:
                    later = any(s.id == target for s in spec.stages[i:])
                    problems.append((("stages", i, field),
                                     f"${{{target}}} names " + ("a later step: a reference names "
                                     "an earlier step" if later else "no step")))
                elif seen[target] not in allowed:
                    problems.append((("stages", i, field),
                                     f"${{{target}}} is a {seen[target]} step; expected "
                                     + " or ".join(allowed)))
            root_field = ROOT_OF.get((kind, field))
            if root_field and getattr(step, root_field) is not None and target is not None:
                problems.append((("stages", i, root_field),
                                 f"only for a literal {field}: ${{{target}}} names its own root"))
            elif (root_field == "checkpoint_root" and value is not None and target is None
                  and getattr(step, root_field) is None):
                problems.append((("stages", i, root_field),
                                 f"a literal {field} needs checkpoint_root"))
        seen.setdefault(step.id, step.stage)
    return problems


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(err: dict) -> tuple:
    """Pydantic's loc without the union tag, pointing at `stage` for a bad tag."""
    loc = list(err["loc"])
    if len(loc) >= 3 and loc[0] == "stages" and isinstance(loc[1], int) and loc[2] in STAGE_KINDS:
        del loc[2]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("stage")
    return tuple(loc)


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of the deepest node `loc` reaches (a mapping entry's key line)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value
                          if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _read(text_or_path: str | os.PathLike) -> str:
    if isinstance(text_or_path, os.PathLike):
        with open(text_or_path, encoding="utf-8") as f:
            return f.read()
    text = str(text_or_path)
    if "\n" not in text and (os.path.isfile(text) or (
            text.endswith((".yaml", ".yml")) and ": " not in text)):
        if not os.path.isfile(text):
            raise SpecError(f"no spec file at {text}")
        with open(text, encoding="utf-8") as f:
            return f.read()
    return text


def load_spec(text_or_path: str | os.PathLike) -> JobSpec:
    """A validated JobSpec from YAML text or a .yaml/.yml path; SpecError on any problem."""
    text = _read(text_or_path)
    try:
        data = yaml.safe_load(text)  # data only: python/* tags raise here, nothing is built
        root = yaml.compose(text, Loader=yaml.SafeLoader)  # same text: positions only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"not a valid spec YAML: {problem}",
                        line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise SpecError("a spec is a mapping with name, workdir, engine and stages",
                        line=_line_of(root, ()))
    try:
        spec = JobSpec.model_validate(data, context={"defer_references": True})
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = _clean_loc(err)
        raise SpecError(err["msg"], format_loc(loc), _line_of(root, loc)) from None
    for loc, msg in reference_errors(spec):
        raise SpecError(msg, format_loc(loc), _line_of(root, loc))
    return spec
