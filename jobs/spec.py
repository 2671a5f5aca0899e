"""Typed job specs: a YAML list of stages, each naming its inputs literally or by `${step id}`.

The step types are the registered stages (`jobs/registry.py`): a step is `stage: <name>`,
an `id`, an optional `output`, and that stage's config fields.

A spec is data only: it is read with `yaml.safe_load` (no Python tags), validated by pydantic
(frozen models, unknown fields rejected), and its references are checked before anything
runs. Every error is a `SpecError` whose message names the field path and the YAML line:

    stages[2].config.lr: Input should be a valid number (line 14)
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Union

import yaml
from loom.jobs import registry
from loom.jobs.registry import ref_target
from loom.pipelines.engine import BeamOptions, Engine, EngineOptions
from loom.schemas import storage
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    model_validator,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # also a folder name under workdir


class SpecError(ValueError):
    """A spec that does not load: the message names the field path and the YAML line."""

    def __init__(self, message: str, path: str = "", line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}: " if path else ""
        super().__init__(f"{where}{message}" + (f" (line {line})" if line else ""))


class _Step(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    output: registry.Uri | None = None  # default: <workdir>/<id>

    def output_root(self, workdir: str) -> str:
        return storage.absolute(self.output) if self.output else storage.join(
            storage.absolute(workdir), self.id)


def _step_model(defn: registry.StageDef) -> type[_Step]:
    """A spec step type: `stage: <name>`, `id`, `output`, then the stage's config fields."""
    name = "".join(p.title() for p in defn.name.split("_")) + "Step"
    return create_model(name, __base__=(_Step, defn.config),
                        stage=(Literal[defn.name], ...))  # type: ignore[valid-type]


STEPS: dict[str, type[_Step]] = {n: _step_model(d) for n, d in registry.load().items()}
STAGE_KINDS = tuple(STEPS)
Stage = Annotated[Union[tuple(STEPS.values())], Field(discriminator="stage")]  # noqa: UP007
IngestStep, SynthStep, ShardStep, TrainStep, MineStep, EvalStep = (
    STEPS[k] for k in ("ingest", "synth", "shard", "train", "mine", "eval"))


class JobSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=ID_PATTERN)
    workdir: registry.Uri
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

    def engine_options(self) -> EngineOptions:
        """The engine and its settings, passed down to every stage this spec runs."""
        return EngineOptions(kind=self.engine, beam=BeamOptions(options=self.beam_options))


def reference_errors(spec: JobSpec) -> list[tuple[tuple, str]]:
    """(loc, message) per bad id or reference, in spec order."""
    problems: list[tuple[tuple, str]] = []
    seen: dict[str, str] = {}  # id -> stage kind, earlier steps only
    for i, step in enumerate(spec.stages):
        if step.id in seen:
            problems.append((("stages", i, "id"), f"duplicate step id {step.id!r}"))
        for field, ref in registry.get(step.stage).refs.items():
            problems += [(("stages", i, *loc), msg) for loc, msg in
                         _field_errors(spec, i, step, field, ref, seen)]
        seen.setdefault(step.id, step.stage)
    return problems


def _field_errors(spec: JobSpec, i: int, step: _Step, field: str, ref: registry.Ref,
                  seen: dict[str, str]) -> list[tuple[tuple, str]]:
    value = getattr(step, field)
    values = list(value) if isinstance(value, list | tuple) else [value]
    out: list[tuple[tuple, str]] = []
    allowed = tuple(ref.kinds)
    targets = [ref_target(v) for v in values]
    for v, target in zip(values, targets, strict=True):
        if isinstance(v, str) and target is None and "${" in v:
            out.append(((field,), f"{v!r}: a reference is the whole value, `${{step id}}`"))
        elif target is not None and target not in seen:
            later = any(s.id == target for s in spec.stages[i:])
            out.append(((field,), f"${{{target}}} names " + (
                "a later step: a reference names an earlier step" if later else "no step")))
        elif target is not None and seen[target] not in allowed:
            out.append(((field,), f"${{{target}}} is a {seen[target]} step; expected "
                        + " or ".join(allowed)))
    if ref.root and ref.root in step.model_fields_set and any(targets):
        out.append(((ref.root,), f"only for a literal {field}: "
                                 f"${{{next(t for t in targets if t)}}} names its own root"))
    elif (ref.literal_needs_root and ref.root not in step.model_fields_set
          and any(v is not None and t is None for v, t in zip(values, targets, strict=True))):
        out.append(((ref.root,), f"a literal {field} needs {ref.root}"))
    return out


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
