"""The stage registry: each stage is one typed config plus one `run` function, by name.

Everything that runs a stage is made from this table: the CLI's commands and flags
(`jobs/commands.py`), the job-spec step types (`jobs/spec.py`), `loom run`/`submit`/
`schedule`/`scheduler` (which run specs) and the demo (a spec built in code). So a value is
checked once, by the stage's pydantic config, whichever way it arrives.

A stage is added with one registration (see docs/contracts.md, "Adding a stage"):

    @register("mystage", MyConfig, help="...", refs={"input": Ref({"synth": "uri"})})
    def mystage(cfg: MyConfig, ctx: Context) -> dict: ...

This module imports no engine and no typer; `load()` imports the modules that register.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from loom.pipelines.engine import EngineOptions
from pydantic import AfterValidator, BaseModel, ConfigDict

# Modules whose import registers stages; a new module of stages adds its name here.
MODULES: tuple[str, ...] = ("loom.jobs.stages",)

REF = re.compile(r"^\$\{([A-Za-z0-9][A-Za-z0-9_-]*)\}$")
SCHEMES = ("gs://", "file://")


def ref_target(value: str | None) -> str | None:
    """The step id a `${id}` value names, or None for a literal."""
    if not isinstance(value, str):
        return None
    m = REF.match(value)
    return m.group(1) if m else None


def _known_scheme(value: str) -> str:
    if "://" in value and not value.startswith(SCHEMES) and ref_target(value) is None:
        raise ValueError(f"unsupported storage scheme in {value!r} (use a local path or gs://)")
    return value


# A dataset, folder or file location: a local path, file:// or gs:// (or a `${step}` in specs).
Uri = Annotated[str, AfterValidator(_known_scheme)]


class StageConfig(BaseModel):
    """Base of every stage's config: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclasses.dataclass(frozen=True)
class Ref:
    """A field that may name an earlier spec step as `${id}`.

    `kinds` maps each step kind it may name to the key of that step's result it takes
    (`uri`, `checkpoint`, `datasets.media`, or `root`: the step's output root). `root`
    names the field that receives a checkpoint step's root with it. `literal_kinds` are
    the dataset stages (manifest `stage`) a literal location may hold: checked before any
    work, so `loom synth --examples <a pairs root>` is refused instead of writing nothing.
    """

    kinds: Mapping[str, str]
    root: str | None = None
    literal_needs_root: bool = False  # specs: a literal checkpoint must say its root
    literal_kinds: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Flag:
    """A CLI option for a config field (a nested one by dotted path, or a renamed one).
    `parse` turns the option's text into the field's value (default: pydantic's parsing);
    `whole` makes it one YAML/JSON mapping (inline or a file) for a nested config."""

    name: str
    help: str = ""
    parse: Callable[[str], Any] | None = None
    whole: bool = False


@dataclasses.dataclass
class Context:
    """What a stage's `run` gets besides its config: where to write and on what engine."""

    engine: EngineOptions = dataclasses.field(default_factory=EngineOptions)
    output: str | None = None  # given explicitly (--output, or a step's `output`)
    default_output: str | None = None  # a spec step's <workdir>/<id>
    workdir: str | None = None  # a spec's workdir
    log: Callable[..., None] = print
    echo: Callable[[str], None] = lambda text: None  # human tables (the CLI: stderr)

    def workdir_of(self, given: str | None, message: str) -> str:
        """A stage's own workdir, else the spec's; BadInput (exit 2) when neither is set."""
        from loom.pipelines.common import BadInput

        if not (given or self.workdir):
            raise BadInput(message)
        return given or self.workdir

    def output_root(self, fallback: str | None = None) -> str:
        from loom.pipelines.common import BadInput
        from loom.schemas import storage

        out = self.output or self.default_output or fallback
        if not out:
            raise BadInput("--output is required")
        try:
            return storage.absolute(_known_scheme(out))
        except ValueError as e:
            raise BadInput(f"--output: {e}") from None


@dataclasses.dataclass(frozen=True)
class StageDef:
    name: str  # the spec's `stage:` value
    config: type[StageConfig]
    run: Callable[[Any, Context], dict]
    help: str
    command: tuple[str, ...]  # CLI path: ("shard",) or ("synth", "relabel")
    refs: Mapping[str, Ref]
    flags: Mapping[str, Flag]  # field path ("llm.backend") -> option; top fields get one anyway
    arguments: tuple[str, ...]  # top fields taken as positional CLI arguments
    output: Literal["required", "optional", "none"]
    engine: bool  # runs work on an engine: the CLI offers --engine

    def flag_for(self, path: tuple) -> str:
        """The CLI name of a field path (its deepest flagged prefix), for error messages."""
        return self.flag_at(path)[0]

    def flag_at(self, path: tuple) -> tuple[str, int]:
        """(CLI name, length of the path prefix it covers); ("", 0) when none does."""
        for n in range(len(path), 0, -1):
            key = ".".join(map(str, path[:n]))
            if key in self.flags:
                return self.flags[key].name.split("/")[0], n
            if n == 1 and key in self.config.model_fields:
                return (key.upper() if key in self.arguments
                        else "--" + key.replace("_", "-")), 1
        return "", 0

    def config_of(self, step: BaseModel) -> StageConfig:
        """The stage config inside a spec step (the fields it set stay 'set')."""
        given = {k: getattr(step, k) for k in step.model_fields_set if k in self.config.model_fields}
        return self.config.model_validate(given)


STAGES: dict[str, StageDef] = {}


def register(name: str, config: type[StageConfig], *, help: str,  # noqa: A002 - typer's word
             command: tuple[str, ...] | None = None, refs: Mapping[str, Ref] | None = None,
             flags: Mapping[str, Flag] | None = None, arguments: tuple[str, ...] = (),
             output: Literal["required", "optional", "none"] = "required",
             engine: bool = False) -> Callable:
    """Registers `run(cfg, ctx) -> dict` as stage `name` (a spec step type and a command)."""
    reserved = {"id", "stage", "output"} & set(config.model_fields)
    if reserved:
        raise TypeError(f"stage {name}: config fields {sorted(reserved)} are the step's own")

    def add(run: Callable[[Any, Context], dict]) -> Callable[[Any, Context], dict]:
        if name in STAGES:
            raise ValueError(f"stage {name!r} is registered twice")
        STAGES[name] = StageDef(name, config, run, help, command or (name,), dict(refs or {}),
                                dict(flags or {}), arguments, output, engine)
        return run

    return add


def load() -> dict[str, StageDef]:
    """Every registered stage (importing the modules that register them)."""
    for module in MODULES:
        importlib.import_module(module)
    return STAGES


def get(name: str) -> StageDef:
    return load()[name]


# --- wiring: `${id}` references -------------------------------------------------------

@dataclasses.dataclass
class Done:
    """What earlier steps produced: results, step kinds, output roots (by step id)."""

    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)
    roots: dict[str, str] = dataclasses.field(default_factory=dict)

    def value(self, target: str, key: str) -> Any:
        if key == "root":
            return self.roots[target]
        value: Any = self.results[target]
        for part in key.split("."):
            value = value[part]
        return value


def resolve_refs(defn: StageDef, cfg: StageConfig, done: Done) -> StageConfig:
    """`cfg` with every `${id}` replaced by what that step produced (a checkpoint ref also
    fills its root field)."""
    from loom.pipelines.common import BadInput

    update: dict[str, Any] = {}
    for field, ref in defn.refs.items():
        value = getattr(cfg, field)
        many = isinstance(value, list | tuple)
        out, roots = [], set()
        for v in (value if many else [value]):
            target = ref_target(v)
            if target is None:
                out.append(v)
                continue
            out.append(done.value(target, ref.kinds[done.kinds[target]]))
            if ref.root:
                roots.add(done.results[target]["checkpoint_root"])
        if out != (list(value) if many else [value]):
            update[field] = type(value)(out) if many else out[0]
        if len(roots) > 1:
            raise BadInput(f"{field}: the steps it names write to different roots {sorted(roots)}")
        if roots:
            update[ref.root] = roots.pop()
    return cfg.model_copy(update=update) if update else cfg


def check_literal_inputs(defn: StageDef, cfg: StageConfig, label: Callable[[str], str]) -> None:
    """A literal input location that holds a dataset of the wrong kind is bad input (before
    any work); a missing one is left to the stage, which names it."""
    from loom.pipelines.common import BadInput
    from loom.schemas import manifest as mf
    from loom.schemas import storage

    for field, ref in defn.refs.items():
        value = getattr(cfg, field)
        if not ref.literal_kinds or not isinstance(value, str) or ref_target(value):
            continue
        try:
            _, manifest = mf.resolve_input(storage.absolute(value))
        except (FileNotFoundError, OSError, ValueError):
            continue
        if manifest.stage not in ref.literal_kinds:
            raise BadInput(f"{label(field)}: {value} holds {manifest.stage} output "
                           f"({manifest.version}); expected {' or '.join(ref.literal_kinds)} output")
