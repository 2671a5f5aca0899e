"""The CLI's stage commands, made from the registry: one option per config field.

Options carry text; the stage's pydantic config turns it into values and checks it, the
same config a spec step is checked by. Only options given on the command line reach the
config (so its defaults, not typer's, apply), and a bad value is refused before any work
with the option's own name: `loom: shard: bad config: --rows-per-shard: Input should be ...`.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import pathlib
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from loom.jobs import registry
from loom.jobs.registry import Context, StageDef, check_literal_inputs
from loom.pipelines.engine import Engine, EngineOptions
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError


@dataclasses.dataclass(frozen=True)
class Param:
    """One CLI parameter of a stage command and the config path it fills."""

    name: str  # the Python parameter name
    path: tuple[str, ...]  # config field path; () for --output / --engine
    kind: str  # "value" | "list" | "map" | "whole" | "output" | "engine"
    flag: str  # the option's name as the user types it (for messages)
    parse: Callable[[str], Any] | None = None
    type: Any = str  # the field's type without Optional (int, float, str, bool, ...)


def _bare(tp: Any) -> tuple[Any, bool]:
    """(type without Optional / Annotated, whether None is allowed)."""
    optional = False
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional = optional or len(args) < len(typing.get_args(tp))
            tp = args[0] if len(args) == 1 else str
        else:
            return tp, optional


def _kind(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is dict:
        return "map"
    if origin in (list, tuple, set, frozenset):
        return "list"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "model"
    return "value"


def _option(flag: str, help_: str, tp: Any, default: Any, argument: bool) -> tuple[Any, Any]:
    """(annotation, default) of one typer parameter (`flag`: an argument's metavar)."""
    if argument:
        multiple = _kind(tp) == "list"
        info = typer.Argument(help=help_, show_default=False, metavar=flag)
        return Annotated[list[str] | None if multiple else str | None, info], None
    names = flag.split("/") if tp is bool and "/" in flag else [flag]
    if tp is bool:
        decl = [f"{names[0]}/{names[1]}"] if len(names) == 2 else names
        return Annotated[bool, typer.Option(*decl, help=help_)], bool(default)
    if _kind(tp) in ("list", "map"):
        return Annotated[list[str] | None, typer.Option(flag, help=help_)], None
    shown = default.value if isinstance(default, enum.Enum) else default
    scalar = tp if tp in (int, float) else str
    return Annotated[scalar | None, typer.Option(flag, help=help_, show_default=shown is not None
                                                  and not isinstance(shown, BaseModel))], shown


def _field_params(defn: StageDef) -> list[tuple[Param, Any, Any]]:
    """(param, annotation, default) for every field option of a stage, in field order."""
    out: list[tuple[Param, Any, Any]] = []

    def add(path: tuple[str, ...], field, flag: str | None, help_: str, parse, whole: bool):
        tp, _ = _bare(field.annotation)
        kind = "whole" if whole else _kind(tp)
        if kind == "model":
            return
        top = path[0]
        argument = len(path) == 1 and top in defn.arguments
        default = None if field.is_required() else field.default
        flag = flag or ("--" + path[-1].replace("_", "-"))
        if tp is bool and "/" not in flag and flag != "--yes":
            flag = f"{flag}/--no-{flag[2:]}"
        if field.is_required():
            help_ = f"{help_} [required]".strip()
        shown_flag = top.upper() if argument else flag.split("/")[0]
        ann, dflt = _option(shown_flag if argument else flag, help_, str if whole else tp,
                            default, argument)
        name = "p_" + "__".join(path)
        out.append((Param(name, path, kind, shown_flag, parse, tp), ann, dflt))

    for top, field in defn.config.model_fields.items():
        flag = defn.flags.get(top)
        tp, _ = _bare(field.annotation)
        if _kind(tp) == "model":
            if flag and flag.whole:
                add((top,), field, flag.name, flag.help, None, True)
            for sub, subfield in tp.model_fields.items():
                f = defn.flags.get(f"{top}.{sub}")
                if f:
                    add((top, sub), subfield, f.name, f.help or subfield.description or "",
                        f.parse, False)
            continue
        add((top,), field, flag.name if flag else None,
            (flag.help if flag and flag.help else field.description) or "",
            flag.parse if flag else None, False)
    return out


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def _mapping(text: str, flag: str) -> dict:
    import yaml
    from loom.pipelines.common import BadInput

    path = pathlib.Path(text)
    raw = yaml.safe_load(path.read_text() if path.is_file() else text) or {}
    if not isinstance(raw, dict):
        raise BadInput(f"{flag} wants a mapping (YAML/JSON inline or a file), not {text!r}")
    return raw


def config_data(defn: StageDef, params: list[Param], values: dict[str, Any],
                given: Callable[[str], bool]) -> dict:
    """The config's input mapping from the options given on the command line."""
    from loom.jobs.cli import key_values

    data: dict[str, Any] = {}
    ordered = sorted(params, key=lambda p: p.kind != "whole")  # a whole mapping, then flags
    for p in ordered:
        if not p.path or not given(p.name):
            continue
        value = values[p.name]
        if p.kind == "whole":
            value = _mapping(value, p.flag)
        elif p.kind == "list":
            value = _split(value if isinstance(value, list) else [value])
        elif p.kind == "map":
            value = key_values(_split(value), p.flag)
        elif p.parse is not None:
            value = p.parse(value)
        node = data
        for part in p.path[:-1]:
            node = node.setdefault(part, {})
        if p.kind == "whole":
            node[p.path[-1]] = {**value, **node.get(p.path[-1], {})}
        else:
            node[p.path[-1]] = value
    return data


def build_config(defn: StageDef, data: dict) -> BaseModel:
    """The stage config; a ValidationError's location becomes the option's name."""
    return validate_options(defn.config, data, defn.flag_at)


def validate_options(model: type[BaseModel], data: dict,
                     flag_at: Callable[[tuple], tuple[str, int]] | None = None) -> BaseModel:
    """`model` from option values; errors name the option (`flag_at(loc)`: the option and
    how much of the location it covers; default: a top field's `--field-name`)."""
    flag_at = flag_at or (lambda loc: ("--" + str(loc[0]).replace("_", "-"), 1) if loc
                          else ("", 0))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            flag, depth = flag_at(loc)
            rest = ".".join(map(str, loc[depth:]))
            where = f"{flag} {rest}".strip() if flag else rest
            errors.append({"type": PydanticCustomError("loom_option", "{msg}",
                                                       {"msg": err["msg"]}),
                           "loc": (where,) if where else (), "input": err.get("input")})
        raise ValidationError.from_exception_data(exc.title, errors) from None


def make_command(defn: StageDef, run: Callable[[Callable[[], dict]], None],
                 say: Callable[..., None], group: bool = False) -> Callable:
    """A typer command function for a stage (`group`: the callback of a command group)."""
    fields = _field_params(defn)
    params = [p for p, _, _ in fields]
    sig = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                             annotation=typer.Context)]
    annotations: dict[str, Any] = {"ctx": typer.Context, "return": None}

    def param(name: str, ann: Any, default: Any) -> None:
        sig.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                     annotation=ann))
        annotations[name] = ann

    for p, ann, default in sorted(fields, key=lambda f: f[0].path[0] not in defn.arguments):
        param(p.name, ann, default)
    if defn.output != "none":
        help_ = "where it writes (a root)" + (" [required]" if defn.output == "required" else "")
        param("p_output", Annotated[str | None, typer.Option("--output", help=help_)], None)
    if defn.engine:
        param("p_engine", Annotated[Engine, typer.Option("--engine")], Engine.BEAM)

    def command(ctx: typer.Context, **values: Any) -> None:
        if group and ctx.invoked_subcommand is not None:
            return
        source = ctx.get_parameter_source

        def given(name: str) -> bool:
            src = source(name)  # typer's own click: compare the enum by name
            return getattr(src, "name", None) in ("COMMANDLINE", "ENVIRONMENT")

        def go() -> dict:
            cfg = build_config(defn, config_data(defn, params, values, given))
            if values.get("p_output"):
                Context(output=values["p_output"]).output_root()  # a known scheme, or exit 2
            check_literal_inputs(defn, cfg, lambda field: defn.flag_for((field,)))
            context = Context(engine=EngineOptions(kind=values.get("p_engine") or Engine.BEAM),
                              output=values.get("p_output"), log=say,
                              echo=lambda text: typer.echo(text, err=True))
            return registry.get(defn.name).run(cfg, context)  # looked up now: replaceable

        run(go)

    command.__signature__ = inspect.Signature(sig)  # type: ignore[attr-defined]
    command.__annotations__ = annotations
    command.__name__ = defn.name
    command.__doc__ = defn.help
    return command


def add_stage_commands(app: typer.Typer, groups: dict[str, typer.Typer],
                       run: Callable[[Callable[[], dict]], None], say: Callable[..., None],
                       stages: dict[str, StageDef]) -> None:
    """One command per registered stage: `loom NAME` or `loom GROUP NAME`; a stage named
    like a group is that group's own command (`loom synth --examples ...`)."""
    for defn in stages.values():
        head, *tail = defn.command
        if tail:
            groups[head].command(tail[0], help=defn.help)(make_command(defn, run, say))
        elif head in groups:
            groups[head].callback(invoke_without_command=True, help=defn.help)(
                make_command(defn, run, say, group=True))
        else:
            app.command(head, help=defn.help)(make_command(defn, run, say))
