"""`loom ...`: every stage as a command; the last stdout line is one JSON object.

Exit codes: 0 success, 1 failure, 2 bad input or config (one-line reason), 3 stopped by
a budget (resumable).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Annotated

import typer

from pipelines.runner import Engine

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="loom: multimodal embedding training data on Beam and Ray.")

Opt = typer.Option


def _emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _run(fn, *args, **kwargs) -> None:
    import pydantic

    from pipelines.common import BadInput
    from pipelines.synth import BudgetExceeded

    try:
        _emit(fn(*args, **kwargs))
    except BudgetExceeded as e:  # resumable: rerun to continue
        _emit(e.payload)
        typer.echo(f"loom: {e}", err=True)
        raise typer.Exit(3) from None
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        typer.echo(f"loom: bad config: {where}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    except (BadInput, FileNotFoundError, ValueError) as e:
        typer.echo(f"loom: {type(e).__name__}: {e}".splitlines()[0], err=True)
        raise typer.Exit(2) from None
    except typer.Exit:
        raise
    except Exception as e:  # noqa: BLE001 - the CLI's one place that maps failures to 1
        if os.environ.get("LOOM_DEBUG"):
            traceback.print_exc()
        typer.echo(f"loom: failed: {type(e).__name__}: {e}".splitlines()[0], err=True)
        raise typer.Exit(1) from None


@app.command()
def corpus(output: Annotated[str, Opt(help="root folder for the corpus version")],
           images: int = 200, texts: int = 200, seed: int = 0) -> None:
    """Generate the offline demo corpus (scenes as images and texts, plus bad files)."""
    from jobs.demo import make_corpus

    _run(make_corpus, output, images, texts, seed)


@app.command()
def ingest(input: Annotated[str, Opt(help="raw prefix: local folder or gs://")],
           output: Annotated[str, Opt(help="dataset root")],
           engine: Engine = Engine.BEAM, image_size: int = 48) -> None:
    """Decode and tokenize every file under a prefix into Examples + Rejected."""
    from pipelines.ingest import run_ingest
    from schemas.spec import PreprocessingSpec

    _run(run_ingest, input, output, PreprocessingSpec(image_size=image_size), engine)


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
          dry_run: Annotated[bool, Opt(help="only count the calls needed")] = False) -> None:
    """Write synthetic query/positive pairs with an LLM (responses cached)."""
    if ctx.invoked_subcommand is not None:
        return
    if not examples or not output:
        typer.echo("loom: synth needs --examples and --output (or: loom synth diff OLD NEW)",
                   err=True)
        raise typer.Exit(2)
    from pipelines.synth import run_synth
    from synth.client import LLMConfig

    def go():
        cfg = LLMConfig(backend=llm, model=model, base_url=base_url)
        return run_synth(examples, output, cfg, engine, heldout_fraction,
                         max_calls=max_calls, dry_run=dry_run)

    _run(go)


@synth_app.command("diff")
def synth_diff(old: Annotated[str, typer.Argument(help="older pairs version")],
               new: Annotated[str, typer.Argument(help="newer pairs version")]) -> None:
    """Rows added, removed and rewritten per query kind between two pairs versions."""
    from pipelines.synth_diff import diff_synth

    _run(diff_synth, old, new)


@app.command()
def shard(input: Annotated[str, Opt(help="pairs or triples root or version")],
          output: Annotated[str, Opt(help="shards root")],
          rows_per_shard: int = 512, seed: int = 0, engine: Engine = Engine.BEAM) -> None:
    """Shuffle and pack train-split pairs/triples into fixed-size Parquet shards."""
    from pipelines.shard import run_shard

    _run(run_shard, input, output, rows_per_shard, seed, engine)


@app.command()
def train(shards: Annotated[str, Opt(help="shards root or version")],
          output: Annotated[str, Opt(help="checkpoint root")],
          stage: Annotated[str, Opt(help="pft|ft")] = "pft",
          init: Annotated[str | None, Opt(help="checkpoint id to start from")] = None,
          init_root: Annotated[str | None, Opt(help="root of --init (default: --output)")] = None,
          workers: int = 1, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
          resume: Annotated[bool, Opt(help="continue an incomplete run of the same id")] = True
          ) -> None:
    """Train the encoder with Ray Train (TorchTrainer, streaming shards)."""
    from pipelines.train import TrainConfig, TrainStage, run_train

    def go():
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr)
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
    from pipelines.mine import run_mine

    _run(lambda: run_mine(pairs, output, checkpoint, checkpoint_root,
                          _mining_config(config, negatives, cross_modal), corpus, cache))


def _mining_config(config: str | None, negatives: int | None, cross_modal: str | None):
    import pathlib

    import yaml

    from transforms.mining import MiningConfig

    raw: dict = {}
    if config:
        path = pathlib.Path(config)
        raw = yaml.safe_load(path.read_text() if path.is_file() else config) or {}
        if not isinstance(raw, dict):
            raise ValueError("--config must be a mapping of MiningConfig fields")
    if negatives is not None:
        raw["negatives"] = negatives
    if cross_modal:
        pairs = (kv.partition("=") for kv in cross_modal.split(",") if kv)
        raw["cross_modal"] = {k.strip(): int(v) for k, _, v in pairs}
    return MiningConfig.model_validate(raw)


@app.command("eval")
def evaluate(pairs: Annotated[str, Opt(help="pairs root or version (held-out split)")],
             output: Annotated[str, Opt(help="eval root")],
             checkpoint: str = "latest", checkpoint_root: str = "checkpoints",
             ground_truth: Annotated[str | None, Opt(help="ground_truth.jsonl")] = None) -> None:
    """Held-out retrieval R@1/R@5 beside random, untrained and lexical baselines."""
    from pipelines.evaluate import run_eval

    _run(run_eval, pairs, checkpoint, checkpoint_root, output, ground_truth)


@app.command()
def backfill(input: Annotated[str, Opt(help="raw prefix to embed: local folder or gs://")],
             output: Annotated[str, Opt(help="embeddings root")],
             checkpoint: Annotated[str, Opt(help="checkpoint id, run, or latest")] = "latest",
             checkpoint_root: Annotated[str, Opt(help="checkpoint root")] = "checkpoints",
             dim: Annotated[int | None, Opt(help="Matryoshka size (default: largest)")] = None,
             faiss_index: Annotated[bool, Opt(help="also write a FAISS index")] = False,
             engine: Engine = Engine.BEAM) -> None:
    """Embed every asset under a prefix with a checkpoint (incremental, resumable)."""
    from pipelines.backfill import run_backfill

    _run(run_backfill, input, output, checkpoint, checkpoint_root, dim, faiss_index, engine)


@app.command()
def soup(checkpoints: Annotated[list[str], typer.Argument(help="checkpoint ids, runs or latest")],
         root: Annotated[str, Opt(help="checkpoint root of the inputs")] = "checkpoints",
         output: Annotated[str | None, Opt(help="root for the new run (default: --root)")] = None,
         weights: Annotated[str | None, Opt(help="comma-separated weights, e.g. 3,1")] = None
         ) -> None:
    """Average checkpoints (uniform or weighted) into a new run; no input run is moved."""
    from pipelines.soup import run_soup

    def go():
        w = [float(x) for x in weights.split(",")] if weights else None
        return run_soup(checkpoints, root, output, w)

    _run(go)


@app.command("run")
def run_(spec: Annotated[str, typer.Argument(help="job spec YAML")]) -> None:
    """Run a job spec's chain locally; stages whose output version exists are skipped."""
    from jobs.run import run_spec
    from jobs.spec import load_spec

    _run(lambda: run_spec(load_spec(spec), lambda m: typer.echo(m, err=True)))


@app.command()
def demo(workdir: Annotated[str, Opt(help="where every stage writes")] = ".loom-demo",
         images: Annotated[int | None, Opt(help="images in the corpus [600]")] = None,
         texts: Annotated[int | None, Opt(help="text passages in the corpus [600]")] = None,
         pft_epochs: Annotated[int | None, Opt(help="pre-fine-tuning epochs [8]")] = None,
         ft_epochs: Annotated[int | None, Opt(help="fine-tuning epochs [3]")] = None,
         engine: Engine = Engine.BEAM) -> None:
    """Run the whole chain end to end on a generated corpus (embedded defaults)."""
    from jobs.demo import DemoConfig, run_demo

    given = {"images": images, "texts": texts, "pft_epochs": pft_epochs, "ft_epochs": ft_epochs}
    cfg = DemoConfig(engine=engine, **{k: v for k, v in given.items() if v is not None})
    _run(run_demo, workdir, cfg, lambda m: typer.echo(m, err=True))


def main() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    app()


if __name__ == "__main__":
    main()
