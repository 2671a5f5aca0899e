"""A spec's `beam_options` mapping as the command-line flags Beam's own parser expects.

Beam declares each option with argparse, and booleans differ: `--use_public_ips` is
`store_true` and its false is a second flag (`--no_use_public_ips`), while `--dry_run` takes
a value. So each key is looked up in Beam's parser (every PipelineOptions subclass) and
written the way that option parses: a flag, its negating flag, `--k=value`, or, for a list,
the flag once per element (`experiments: [a, b]` -> `--experiments=a --experiments=b`).

The local runner is named explicitly (FnApiRunner): Beam's `DirectRunner` first tries the
Prism runner, which downloads a Go binary from the internet before falling back.
"""

from __future__ import annotations

import argparse
import functools

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

LOCAL_RUNNER = "FnApiRunner"  # what "DirectRunner" (or no runner) runs as
Value = str | int | float | bool | list


_FLAGS = (argparse._StoreTrueAction, argparse._StoreFalseAction)  # noqa: SLF001


class BeamOptionError(ValueError):
    """An option whose value cannot be written for Beam's parser (exit 2 via BadInput)."""


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


@functools.lru_cache(maxsize=1)
def _actions() -> dict[str, argparse.Action]:
    """Beam's option flags ('--name') -> their argparse action."""
    parser = _BeamArgumentParser(allow_abbrev=False)
    seen: set[str] = set()
    for cls in _subclasses(PipelineOptions):
        if "_add_argparse_args" in cls.__dict__ and cls.__qualname__ not in seen:
            seen.add(cls.__qualname__)
            try:
                cls._add_argparse_args(parser)  # noqa: SLF001 - Beam's own registration
            except argparse.ArgumentError:
                continue  # a class registered twice (Beam notes this happens)
    return dict(parser._option_string_actions)  # noqa: SLF001


def _bool_flag(key: str, value: bool) -> list[str]:
    action = _actions().get(f"--{key}")
    if action is None:  # not Beam's: a runner-specific option, written with its value
        return [f"--{key}={'true' if value else 'false'}"]
    if isinstance(action, _FLAGS):
        if value:
            return [f"--{key}"]  # `no_use_public_ips: true` is the flag as written
        for flag, other in _actions().items():  # the flag that sets the same dest the other way
            if other.dest == action.dest and other is not action and isinstance(other, _FLAGS):
                return [flag]
        if action.default in (None, False) and isinstance(action, argparse._StoreTrueAction):  # noqa: SLF001
            return []  # unset is false
        raise BeamOptionError(f"beam_options.{key}: false cannot be expressed as a flag")
    if action.nargs == 0:
        raise BeamOptionError(f"beam_options.{key}: takes no value")
    if not value and action.default in (None, False):
        return []  # a value option whose default is already false: "False" would be truthy
    return [f"--{key}={value}"]


def to_args(options: dict[str, Value]) -> list[str]:
    """Beam flags for an options mapping, in its order."""
    args: list[str] = []
    for key, value in options.items():
        if isinstance(value, bool):
            args += _bool_flag(key, value)
        elif isinstance(value, list | tuple):
            args += [f"--{key}={v}" for v in value]
        elif value is None:
            continue
        else:
            args.append(f"--{key}={value}")
    return args


def local_runner(options: dict[str, Value]) -> dict[str, Value]:
    """The options with a local runner named explicitly (never DirectRunner's Prism try)."""
    runner = str(options.get("runner", "DirectRunner"))
    if runner in ("DirectRunner", "SwitchingDirectRunner"):
        return {**options, "runner": LOCAL_RUNNER}
    return dict(options)


def from_args(args: list[str]) -> dict[str, Value]:
    """Pipeline flags (`--k=v`, `--k v`, `--flag`, repeated) as an options mapping."""
    out: dict[str, Value] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise BeamOptionError(f"not a pipeline option: {arg!r}")
        key, eq, value = arg[2:].partition("=")
        action = _actions().get(f"--{key}")
        if not eq:
            if isinstance(action, _FLAGS) or i + 1 >= len(args) or args[i + 1].startswith("--"):
                value = True
            else:
                i += 1
                value = args[i]
        if key in out and not isinstance(value, bool):  # repeated: a list
            prev = out[key]
            out[key] = [*(prev if isinstance(prev, list) else [prev]), value]
        else:
            out[key] = value
        i += 1
    return out
