"""`loom ...`: every stage as a command; the last stdout line is one JSON object.

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

from loom.jobs import logs
from loom.pipelines.runner import Engine

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


@app.command()
def corpus(output: Annotated[str, Opt(help="root folder for the corpus version")],
           images: int = 200, texts: int = 200, seed: int = 0,
           world: Annotated[str, Opt(help="simple (one shape) or rich (one or two objects "
                                          "in near-miss families)")] = "simple") -> None:
    """Generate the offline demo corpus (scenes as images and texts, plus bad files)."""
    from loom.jobs.demo import make_corpus

    _run(make_corpus, output, images, texts, seed, world)


@app.command()
def ingest(input: Annotated[str, Opt(help="raw prefix: local folder or gs://")],
           output: Annotated[str, Opt(help="dataset root")],
           engine: Engine = Engine.BEAM, image_size: int = 48,
           allow_host: Annotated[list[str] | None, Opt(
               help="host whose http(s) manifest references may be fetched (repeatable)")] = None
           ) -> None:
    """Decode and tokenize every file under a prefix into Examples + Rejected."""
    from loom.pipelines.ingest import run_ingest
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.remote import RemoteConfig

    _run(run_ingest, input, output, PreprocessingSpec(image_size=image_size), engine,
         remote=RemoteConfig(allowed_hosts=tuple(allow_host or ())))


synth_app = typer.Typer(add_completion=False, help="Write synthetic query/positive pairs with an LLM "
                        "(responses cached); `loom synth diff OLD NEW` compares two versions.")
app.add_typer(synth_app, name="synth")


@synth_app.callback(invoke_without_command=True)
def synth(ctx: typer.Context,
          examples: Annotated[str | None, Opt(help="examples root or version")] = None,
          output: Annotated[str | None, Opt(help="pairs root")] = None,
          llm: Annotated[str, Opt(help="offline|gemini|vertex")] = "offline",
          model: str = "gemini-2.5-flash",
          base_url: Annotated[str | None, Opt(help="override the API endpoint")] = None,
          engine: Engine = Engine.BEAM, heldout_fraction: float = 0.2,
          max_calls: Annotated[int | None, Opt(help="LLM call budget (exit 3 when hit)")] = None,
          max_tokens: Annotated[int | None, Opt(help="LLM token budget (exit 3)")] = None,
          max_cost: Annotated[float | None, Opt(help="USD budget, synth/prices.yaml (exit 3)")
                              ] = None,
          dry_run: Annotated[bool, Opt(help="only estimate calls, tokens and cost")] = False,
          concurrency: Annotated[int, Opt(help="requests in flight per worker")] = 32,
          rpm: Annotated[float | None, Opt(help="requests per minute (all workers)")] = None,
          tpm: Annotated[float | None, Opt(help="tokens per minute (all workers)")] = None,
          script: Annotated[str, Opt(help="expected query script (latin, cyrillic, cjk, ...; "
                                          "none: no language filter)")] = "latin",
          checkpoint: Annotated[str | None, Opt(help="round-trip filter with this checkpoint")
                                ] = None,
          checkpoint_root: str = "checkpoints",
          roundtrip_k: Annotated[int, Opt(help="round trip: positive within top k")] = 10
          ) -> None:
    """Write synthetic query/positive pairs with an LLM (responses cached)."""
    if ctx.invoked_subcommand is not None:
        return
    if not examples or not output:
        logs.error("loom: synth needs --examples and --output (or: loom synth diff OLD NEW)",
                   exit_code=2)
        raise typer.Exit(2)
    from loom.pipelines.synth import run_synth
    from loom.synth.budget import Budget
    from loom.synth.client import LLMConfig
    from loom.synth.filters import FilterConfig
    from loom.synth.limits import RateLimits

    def go():
        cfg = LLMConfig(backend=llm, model=model, base_url=base_url)
        return run_synth(
            examples, output, cfg, engine, heldout_fraction, dry_run=dry_run,
            budget=Budget(max_calls=max_calls, max_tokens=max_tokens, max_cost=max_cost),
            limits=RateLimits(concurrency=concurrency, requests_per_minute=rpm,
                              tokens_per_minute=tpm),
            filters=FilterConfig(script=None if script == "none" else script,
                                 roundtrip_k=roundtrip_k),
            checkpoint=checkpoint, checkpoint_root=checkpoint_root)

    _run(go)


@synth_app.command("relabel")
def synth_relabel(triples: Annotated[str, Opt(help="triples root or version (loom mine)")],
                  output: Annotated[str, Opt(help="relabelled triples root")],
                  llm: Annotated[str, Opt(help="offline|gemini|vertex")] = "offline",
                  model: str = "gemini-2.5-flash",
                  base_url: Annotated[str | None, Opt(help="override the API endpoint")] = None,
                  negatives: int = 3,
                  concurrency: Annotated[int, Opt(help="requests in flight")] = 32) -> None:
    """FRet relabel: the LLM picks each query's best positive and hard negatives among
    its mined candidates; the `relabels` table records which positives changed."""
    from loom.pipelines.synth_relabel import run_relabel
    from loom.synth.client import LLMConfig
    from loom.synth.limits import RateLimits

    def go():
        return run_relabel(triples, output, LLMConfig(backend=llm, model=model, base_url=base_url),
                           negatives, RateLimits(concurrency=concurrency))

    _run(go)


@synth_app.command("diff")
def synth_diff(old: Annotated[str, typer.Argument(help="older pairs version")],
               new: Annotated[str, typer.Argument(help="newer pairs version")]) -> None:
    """Rows added, removed and rewritten per query kind between two pairs versions."""
    from loom.pipelines.synth_diff import diff_synth

    _run(diff_synth, old, new)


@app.command()
def shard(input: Annotated[str, Opt(help="pairs or triples root or version")],
          output: Annotated[str, Opt(help="shards root")],
          rows_per_shard: int = 512, seed: int = 0, engine: Engine = Engine.BEAM,
          target_mb: Annotated[float | None, Opt(help="shard size in MB (overrides rows)")] = None,
          weight: Annotated[list[str] | None, Opt(help="KEY=W: sample rows of a query kind or "
                                                  "positive modality W times (repeatable)")] = None
          ) -> None:
    """Shuffle and pack train-split pairs/triples into fixed-size Parquet shards."""
    from loom.pipelines.shard import run_shard

    def go():
        weights = key_values(weight or [], "--weight", float, "KEY=NUMBER")
        return run_shard(input, output, rows_per_shard, seed, engine, target_mb, weights)

    _run(go)


@app.command()
def train(shards: Annotated[str, Opt(help="shards root or version")],
          output: Annotated[str, Opt(help="checkpoint root")],
          stage: Annotated[str, Opt(help="pft|ft")] = "pft",
          init: Annotated[str | None, Opt(help="checkpoint id to start from")] = None,
          init_root: Annotated[str | None, Opt(help="root of --init (default: --output)")] = None,
          workers: int = 1, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
          temperature: float = 0.05,
          learn_temperature: Annotated[bool, Opt(help="learn the temperature (from --temperature)")
                                       ] = False,
          resume: Annotated[bool, Opt(help="continue an incomplete run of the same id")] = True
          ) -> None:
    """Train the encoder with Ray Train (TorchTrainer, streaming shards)."""
    from loom.pipelines.train import TrainConfig, TrainStage, run_train

    def go():
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
                          learn_temperature=learn_temperature)
        return run_train(shards, output, TrainStage(stage), cfg, init, init_root, workers, resume)

    _run(go)


@app.command()
def mine(pairs: Annotated[str, Opt(help="pairs root or version")],
         output: Annotated[str, Opt(help="triples root")],
         checkpoint: Annotated[str, Opt(help="checkpoint id, run, or latest")] = "latest",
         checkpoint_root: Annotated[str, Opt(help="checkpoint root")] = "checkpoints",
         corpus: Annotated[str | None, Opt(help="examples (default: the pairs' corpus)")] = None,
         negatives: Annotated[int | None, Opt(help="negatives of the positive's modality")] = None,
         cross_modal: Annotated[str | None, Opt(help="extra negatives, e.g. image=1,text=1")] = None,
         config: Annotated[str | None, Opt(help="MiningConfig as a YAML/JSON file or inline")] = None,
         cache: Annotated[str | None, Opt(help="embedding cache root (default: --output)")] = None
         ) -> None:
    """Mine modality-aware hard negatives with an encoder checkpoint."""
    from loom.pipelines.mine import run_mine

    _run(lambda: run_mine(pairs, output, checkpoint, checkpoint_root,
                          _mining_config(config, negatives, cross_modal), corpus, cache))


def _mining_config(config: str | None, negatives: int | None, cross_modal: str | None):
    import pathlib

    import yaml

    from loom.transforms.mining import MiningConfig

    raw: dict = {}
    if config:
        path = pathlib.Path(config)
        raw = yaml.safe_load(path.read_text() if path.is_file() else config) or {}
        if not isinstance(raw, dict):
            raise ValueError("--config must be a mapping of MiningConfig fields")
    if negatives is not None:
        raw["negatives"] = negatives
    if cross_modal:
        raw["cross_modal"] = key_values((kv for kv in cross_modal.split(",") if kv),
                                        "--cross-modal", int, "MODALITY=COUNT,...")
    return MiningConfig.model_validate(raw)


@app.command("eval")
def evaluate(pairs: Annotated[str, Opt(help="pairs root or version (held-out split)")],
             output: Annotated[str, Opt(help="eval root")],
             checkpoint: str = "latest", checkpoint_root: str = "checkpoints",
             ground_truth: Annotated[str | None, Opt(help="ground_truth.jsonl")] = None,
             dims: Annotated[str, Opt(help="extra prefix sizes, e.g. 32,64 (truncation)")] = ""
             ) -> None:
    """Held-out R@1/R@5/NDCG@10 per modality pair and Matryoshka size, beside baselines.

    The table goes to stderr (the terminal); stdout's last line stays the JSON result.
    """
    from loom.pipelines.evaluate import format_table, run_eval

    def go():
        sizes = tuple(int(d) for d in dims.split(",") if d.strip())
        out = run_eval(pairs, checkpoint, checkpoint_root, output, ground_truth, dims=sizes)
        typer.echo(format_table(out.get("eval", {})), err=True)
        return out

    _run(go)


@app.command()
def backfill(input: Annotated[str, Opt(help="raw prefix to embed: local folder or gs://")],
             output: Annotated[str, Opt(help="embeddings root")],
             checkpoint: Annotated[str, Opt(help="checkpoint id, run, or latest")] = "latest",
             checkpoint_root: Annotated[str, Opt(help="checkpoint root")] = "checkpoints",
             dim: Annotated[int | None, Opt(help="Matryoshka size (default: largest)")] = None,
             faiss_index: Annotated[bool, Opt(help="also write a FAISS index")] = False,
             engine: Engine = Engine.BEAM) -> None:
    """Embed every asset under a prefix with a checkpoint (incremental, resumable)."""
    from loom.pipelines.backfill import run_backfill

    _run(run_backfill, input, output, checkpoint, checkpoint_root, dim, faiss_index, engine)


@app.command()
def soup(checkpoints: Annotated[list[str], typer.Argument(help="checkpoint ids, runs or latest")],
         root: Annotated[str, Opt(help="checkpoint root of the inputs")] = "checkpoints",
         output: Annotated[str | None, Opt(help="root for the new run (default: --root)")] = None,
         weights: Annotated[str | None, Opt(help="comma-separated weights, e.g. 3,1")] = None
         ) -> None:
    """Average checkpoints (uniform or weighted) into a new run; no input run is moved."""
    from loom.pipelines.soup import run_soup

    def go():
        w = [float(x) for x in weights.split(",")] if weights else None
        return run_soup(checkpoints, root, output, w)

    _run(go)


@app.command("run")
def run_(spec: Annotated[str, typer.Argument(help="job spec YAML")]) -> None:
    """Run a job spec's chain locally; stages whose output version exists are skipped."""
    from loom.jobs.run import run_spec
    from loom.jobs.spec import load_spec

    _run(lambda: run_spec(load_spec(spec), logs.say))


@app.command()
def submit(spec: Annotated[str, typer.Argument(help="job spec YAML")],
           address: Annotated[str, Opt(help="Ray dashboard, e.g. http://HOST:8265")],
           wait: Annotated[bool, Opt("--wait/--no-wait", help="wait for the job to end")] = True,
           timeout: Annotated[float, Opt(help="seconds to wait before stopping the job")]
           = 3600.0,
           python: Annotated[str, Opt(help="python on the cluster")] = "python",
           env: Annotated[list[str] | None, Opt(help="KEY=VALUE for the job (repeatable)")]
           = None) -> None:
    """Run a job spec on a Ray cluster (Ray Jobs API); loom travels in the runtime env."""
    from loom.jobs.submit import submit as submit_job

    def go():
        from loom.jobs.submit import check_env_vars

        env_vars = key_values(env or [], "--env")
        check_env_vars(env_vars)  # before anything reaches the cluster
        return submit_job(spec, address, wait, timeout, python, env_vars, log=logs.say)

    _run(go)


@app.command()
def schedule(spec: Annotated[str, typer.Argument(help="job spec YAML")],
             cron: Annotated[str, Opt(help='5-field cron, e.g. "0 3 * * *"')],
             output: Annotated[str | None, Opt(help="manifest file to write")] = None,
             image: str = "loom:latest",
             time_zone: Annotated[str | None, Opt(help="e.g. Europe/Paris (default UTC)")]
             = None,
             workers: Annotated[int, Opt(help="CPU workers per run")] = 1) -> None:
    """Render a KubeRay RayCronJob (plus the spec as a ConfigMap) that runs the spec."""
    from loom.jobs.schedule import write_schedule

    _run(write_schedule, spec, cron, output, image, time_zone, workers)


@app.command()
def scheduler(schedules: Annotated[str, typer.Argument(help="YAML: schedules of spec + cron")],
              once: Annotated[bool, Opt(help="one tick, then exit")] = False,
              now: Annotated[str | None, Opt(help="the clock for this tick (ISO time)")] = None,
              wait: Annotated[bool, Opt(help="with --once: wait for started runs")] = False,
              poll_s: Annotated[float, Opt(help="seconds between ticks")] = 30.0) -> None:
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
         engine: Engine = Engine.BEAM) -> None:
    """Run the whole chain end to end on a generated corpus (embedded defaults)."""
    from loom.jobs.demo import DemoConfig, run_demo

    given = {"images": images, "texts": texts, "pft_epochs": pft_epochs, "ft_epochs": ft_epochs,
             "world": world}
    cfg = DemoConfig(engine=engine, **{k: v for k, v in given.items() if v is not None})
    _run(run_demo, workdir, cfg, logs.say)


@app.command()
def report(workdir: Annotated[str, typer.Argument(help="a workdir (loom demo / loom run)")],
           output: Annotated[str | None, Opt(help="HTML path (default WORKDIR/report.html)")]
           = None) -> None:
    """One self-contained HTML page: counts, rejections, synth, negatives, loss, eval."""
    from loom.jobs.report_html import report_workdir

    _run(report_workdir, workdir, output)


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


@app.command()
def gc(root: Annotated[str, typer.Argument(help="dataset root, or a workdir of roots")],
       keep: Annotated[int, Opt(help="newest versions to keep per root and stage")] = 3,
       dry_run: Annotated[bool, Opt("--dry-run/--no-dry-run", help="only print the plan")]
       = True,
       yes: Annotated[bool, Opt("--yes", help="delete (same as --no-dry-run)")] = False,
       grace_hours: Annotated[float, Opt(help="partial writes younger than this stay")] = 6.0
       ) -> None:
    """Delete old versions nothing kept depends on, and stale partial writes (plan first)."""
    from loom.jobs.ops import gc as run_gc

    _run(lambda: run_gc(root, keep, dry_run=dry_run and not yes, grace_s=grace_hours * 3600,
                        log_line=logs.say))


@app.command()
def forget(targets: Annotated[list[str], typer.Argument(help="asset ids (sha256) or source URIs")],
           workdir: Annotated[str, Opt(help="workdir whose dataset roots hold the asset")]
           ) -> None:
    """Take assets down: new versions of every dataset without them, caches purged; then
    `loom gc --yes` deletes the old versions."""
    from loom.jobs.forget import run_forget

    _run(run_forget, targets, workdir, logs.say)


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app()


if __name__ == "__main__":
    main()
