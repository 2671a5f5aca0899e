"""`loom ...`: every stage as a command; the last stdout line is one JSON object.

The stage commands (ingest, synth, shard, train, ...) are made from the stage registry
(`jobs/registry.py`, `jobs/commands.py`); this module adds the commands that run specs and
look at outputs.

Exit codes: 0 success, 1 failure, 2 bad input or config (one-line reason), 3 stopped by
a budget (resumable).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer
from loom.jobs import logs, registry
from loom.jobs.commands import add_stage_commands
from loom.pipelines.engine import Engine

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="loom: multimodal embedding training data on Beam and Ray.")

Opt = typer.Option


@app.callback()
def _global(log_json: Annotated[bool, Opt("--log-json", help="structured JSON logs on stderr")]
            = False,
            log_level: Annotated[str, Opt(help="DEBUG|INFO|WARNING|ERROR")] = "INFO") -> None:
    """loom: multimodal embedding training data on Beam and Ray."""
    logs.setup(log_json, log_level)


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _run(fn, *args, **kwargs) -> None:
    """Run a command's body: its JSON on stdout, or (jobs/errors.py) the exit code, the
    one-line reason on stderr and a JSON line naming stage, exit_code and error."""
    from loom.jobs import errors

    try:  # typer vendors click; its current context names the command that runs
        from typer.main import get_current_context
        ctx = get_current_context(silent=True)
    except ImportError:
        ctx = None
    stage = (ctx.info_name if ctx is not None else None) or "loom"
    code = errors.run(lambda: fn(*args, **kwargs), stage, _emit, logs.error)
    if code:
        raise typer.Exit(code)


def key_values(items: Iterable[str], flag: str, convert: Callable[[str], Any] = str,
               wants: str = "KEY=VALUE") -> dict[str, Any]:
    """KEY=VALUE options (--weight, --cross-modal, --env) as a dict; a malformed one is a
    BadInput naming the flag (exit 2)."""
    from loom.pipelines.common import BadInput

    out: dict[str, Any] = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError(kv)
            out[key.strip()] = convert(value)
        except ValueError:
            raise BadInput(f"{flag} wants {wants}, not {kv!r}") from None
    return out


synth_app = typer.Typer(add_completion=False)
app.add_typer(synth_app, name="synth")
add_stage_commands(app, {"synth": synth_app}, _run, logs.say, registry.load())


@synth_app.command("diff")
def synth_diff(old: Annotated[str, typer.Argument(help="older pairs version")],
               new: Annotated[str, typer.Argument(help="newer pairs version")]) -> None:
    """Rows added, removed and rewritten per query kind between two pairs versions."""
    from loom.pipelines.synth_diff import diff_synth

    _run(diff_synth, old, new)


@app.command("run")
def run_(spec: Annotated[str, typer.Argument(help="job spec YAML")],
         check: Annotated[bool, Opt("--check", help="only validate the spec (types, bounds, "
                                                    "wiring); run nothing")] = False) -> None:
    """Run a job spec's chain locally; stages whose output version exists are skipped."""
    from loom.jobs.run import check_spec, run_spec
    from loom.jobs.spec import load_spec

    _run(lambda: check_spec(load_spec(spec)) if check else run_spec(load_spec(spec), logs.say))


@app.command()
def submit(spec: Annotated[str, typer.Argument(help="job spec YAML")],
           address: Annotated[str, Opt(help="Ray dashboard, e.g. http://HOST:8265")],
           wait: Annotated[bool, Opt("--wait/--no-wait", help="wait for the job to end")] = True,
           timeout: Annotated[float, Opt(help="seconds to wait before stopping the job", min=1)]
           = 3600.0,
           python: Annotated[str, Opt(help="python on the cluster")] = "python",
           env: Annotated[list[str] | None, Opt(help="KEY=VALUE for the job (repeatable)")]
           = None,
           shared_fs: Annotated[bool, Opt(help="every node mounts the spec's local paths "
                                          "(else a multi-node cluster needs gs://)")] = False
           ) -> None:
    """Run a job spec on a Ray cluster (Ray Jobs API); loom travels in the runtime env."""
    from loom.jobs.submit import submit as submit_job

    def go():
        from loom.jobs.submit import check_env_vars

        env_vars = key_values(env or [], "--env")
        check_env_vars(env_vars)  # before anything reaches the cluster
        return submit_job(spec, address, wait, timeout, python, env_vars, log=logs.say,
                          shared_fs=shared_fs)

    _run(go)


@app.command()
def schedule(spec: Annotated[str, typer.Argument(help="job spec YAML")],
             cron: Annotated[str, Opt(help='5-field cron, e.g. "0 3 * * *"')],
             output: Annotated[str | None, Opt(help="manifest file to write")] = None,
             image: str = "loom:latest",
             time_zone: Annotated[str | None, Opt(help="e.g. Europe/Paris (default UTC)")]
             = None,
             workers: Annotated[int, Opt(help="CPU workers per run", min=1)] = 1) -> None:
    """Render a KubeRay RayCronJob (plus the spec as a ConfigMap) that runs the spec."""
    from loom.jobs.schedule import write_schedule

    _run(write_schedule, spec, cron, output, image, time_zone, workers)


@app.command()
def scheduler(schedules: Annotated[str, typer.Argument(help="YAML: schedules of spec + cron")],
              once: Annotated[bool, Opt(help="one tick, then exit")] = False,
              now: Annotated[str | None, Opt(help="the clock for this tick (ISO time)")] = None,
              wait: Annotated[bool, Opt(help="with --once: wait for started runs")] = False,
              poll_s: Annotated[float, Opt(help="seconds between ticks", min=0.1)] = 30.0) -> None:
    """Run due `loom run` jobs on this machine (no overlap, restart-safe, outcomes kept)."""
    import datetime as dt

    from loom.jobs.scheduler import serve

    def go():
        clock = dt.datetime.fromisoformat(now) if now else None
        if clock and clock.tzinfo is None:
            clock = clock.replace(tzinfo=dt.timezone.utc)
        return serve(schedules, once, clock, wait, poll_s, log=logs.say)

    _run(go)


@app.command()
def demo(workdir: Annotated[str, Opt(help="where every stage writes")] = ".loom-demo",
         images: Annotated[int | None, Opt(help="images in the corpus [600]")] = None,
         texts: Annotated[int | None, Opt(help="text passages in the corpus [600]")] = None,
         pft_epochs: Annotated[int | None, Opt(help="pre-fine-tuning epochs [8]")] = None,
         ft_epochs: Annotated[int | None, Opt(help="fine-tuning epochs [3]")] = None,
         world: Annotated[str | None, Opt(help="demo world: simple or rich [simple]")] = None,
         trunk: Annotated[str | None, Opt(help="hf:PATH: train on a Hugging Face trunk "
                                               "(loom train --trunk)")] = None,
         engine: Engine = Engine.BEAM) -> None:
    """Run the whole chain end to end on a generated corpus (embedded defaults)."""
    from loom.jobs.commands import validate_options
    from loom.jobs.demo import DemoConfig, run_demo

    given = {"images": images, "texts": texts, "pft_epochs": pft_epochs, "ft_epochs": ft_epochs,
             "world": world, "trunk": trunk}
    _run(lambda: run_demo(workdir, validate_options(DemoConfig, {"engine": engine, **{
        k: v for k, v in given.items() if v is not None}}), logs.say))


@app.command("ls")
def ls_(root: Annotated[str, typer.Argument(help="dataset root, or a workdir of roots")]) -> None:
    """Dataset versions with their lineage and sizes (and partial writes)."""
    from loom.jobs.ops import format_ls, list_versions

    def go():
        out = list_versions(root)
        if out["versions"] or out["partials"]:
            typer.echo(format_ls(out))
        return out

    _run(go)


@app.command()
def inspect(uri: Annotated[str, typer.Argument(help="a version folder, or a root (newest)")]
            ) -> None:
    """A dataset version's manifest and lineage chain."""
    from loom.jobs.ops import inspect_version

    def go():
        out = inspect_version(uri)
        m = out["manifest"]
        typer.echo(f"{m['version']}  stage={m['stage']}  created={m['created_at']}  "
                   f"bytes={out['bytes']}  files={out['files']}")
        for table, files in m["tables"].items():
            typer.echo(f"  {table}: {sum(f['rows'] for f in files)} rows in {len(files)} files")
        typer.echo("  counts: " + json.dumps(m["counts"], sort_keys=True))
        typer.echo("  config: " + json.dumps(m["config"], sort_keys=True, default=str))
        for link in out["lineage_chain"]:
            typer.echo(f"  {link['of']} <-{link['via']}- {link['version']}  ({link['uri']})")
        return out

    _run(go)


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app()


if __name__ == "__main__":
    main()
