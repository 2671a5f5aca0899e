"""Train: shards -> a checkpoint run (`pft` on pairs, `ft` with hard negatives)."""

from __future__ import annotations

import enum
import json
import math
from typing import Literal

from loom.models.checkpoint import BEST, checkpoint_configs, load_checkpoint, resolve
from loom.models.encoder import EncoderConfig
from loom.pipelines.cluster import check_paths
from loom.pipelines.common import BadInput, timed
from loom.pipelines.train_data import Batching, DataPlan
from loom.pipelines.train_validation import Validation
from loom.schemas import manifest as mf
from loom.schemas import storage
from pydantic import BaseModel, ConfigDict, Field


class TrainStage(str, enum.Enum):
    PFT = "pft"
    FT = "ft"


class TrainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    temperature: float = Field(0.05, gt=0)  # the initial value when learn_temperature
    learn_temperature: bool = False
    bf16: bool = True  # autocast on CUDA only; the CPU path stays float32
    max_negatives: int = Field(3, ge=0)
    checkpoint_every: int = Field(100, ge=1)
    report_every: int = Field(10, ge=1)
    seed: int = Field(0, ge=0)
    # In-batch negatives across every worker's batch (models/distributed.py); a no-op on one.
    cross_worker_negatives: bool = True
    # Rows per chunk of a cached (GradCache) step, 0 = off: the batch is then bounded by
    # time, not activation memory (models/step.py).
    cache_chunk: int = Field(0, ge=0)
    grad_checkpointing: bool = False  # recompute layer activations in backward
    # mixed: batches as the shards hold them; aligned: each step's global batch from one
    # bucket (pipelines/train_data.py). None: aligned for ft, mixed for pft.
    batching: Batching | None = None
    bucket_by: tuple[Literal["kind", "modality", "query_modality"], ...] = ("kind", "modality")
    bucket_weights: dict[str, float] | None = None  # "caption/image" -> weight; else by size
    dim: int = Field(128, ge=1)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    embed_dims: tuple[int, ...] = (32, 64, 128)
    max_frames: int = Field(32, ge=1, le=256)  # video frames the encoder sees per clip
    # hf:PATH: a local Hugging Face model (BERT-like) as the fusion trunk, its tokenizer
    # replacing ingest's (models/trunk.py); dim/layers/heads then come from it, and
    # embed_dims defaults to (hidden/4, hidden/2, hidden).
    trunk: str | None = None


def encoder_for(spec, tc: TrainConfig) -> EncoderConfig:
    return EncoderConfig(vocab_size=spec.vocab_size, max_text_tokens=spec.max_text_tokens,
                         image_size=spec.image_size, patch_size=spec.patch_size,
                         n_mels=spec.audio_n_mels, dim=tc.dim, layers=tc.layers, heads=tc.heads,
                         embed_dims=tc.embed_dims,
                         max_frames=min(tc.max_frames, spec.video_max_frames))


def run_train(shards_uri: str, output_root: str, stage: TrainStage, config: TrainConfig,
              init: str | None = None, init_root: str | None = None, workers: int = 1,
              resume: bool = True, max_failures: int = 1, stop_at_step: int | None = None,
              log_rows: str | None = None, val_shards: str | None = None,
              val_every: int = 100, val_rows: int = 512, keep_best: bool = False) -> dict:
    """Trains one run; its id hashes shards, init and config, so a rerun of an incomplete
    run resumes it (unless resume=False), and a complete one is reused.

    `stop_at_step` is a step budget (checkpoint there and stop, resumable); `log_rows` a
    local folder where each rank appends the pair ids of every step (rank<r>.jsonl).
    `val_shards` (held-out shards, `loom shard --split heldout`) adds validation every
    `val_every` steps on its first `val_rows` rows (pipelines/train_validation.py), and
    `keep_best` marks the best one's checkpoint (`<run>/best`). None of these is part of
    the run's identity."""
    check_paths(shards=shards_uri, output=output_root, init_root=init_root,
                val_shards=val_shards,  # multi-node: no local paths
                trunk=config.trunk.removeprefix("hf:") if config.trunk else None)
    from loom.pipelines.ray.train import LoopConfig, fit, latest_of_run
    from loom.pipelines.shard import spec_of

    shards_uri, output_root = storage.absolute(shards_uri), storage.absolute(output_root)
    init_root = storage.absolute(init_root) if init_root else None
    sh_dir, sh_manifest = mf.resolve_input(shards_uri)
    if "shards" not in sh_manifest.tables:
        raise BadInput(f"{sh_dir} is not a shards dataset")
    if sh_manifest.config.get("split", "train") != "train":
        raise BadInput(f"{sh_dir} holds {sh_manifest.config['split']} rows: train on train "
                       "shards (pass these as --val-shards)")
    validation = validation_of(val_shards, val_every, val_rows, keep_best)
    init_ref = None
    if init:
        init_root = init_root or output_root
        init_ref = (init_root, resolve(init_root, init))
    spec = spec_of(sh_manifest)
    init_enc = None
    if init_ref:  # a stage started from weights applies those weights' spec (and trunk)
        spec, init_enc = checkpoint_configs(*init_ref)
    enc = encoder_for(spec, config)
    if config.trunk:
        enc, spec = on_trunk(config, spec, enc, sh_dir, sh_manifest)
    elif init_enc is not None and init_enc.trunk:  # the run goes on with the init's trunk
        _needs_text(sh_dir, sh_manifest)
        enc = init_enc
    run_hash = mf.version_id("train", [sh_manifest.version, init_ref[1] if init_ref else ""],
                             config.model_dump() | {"workers": workers, "stage": stage.value})
    run = run_hash.replace("train-", f"{stage.value}-", 1)
    out = {"stage": "train", "train_stage": stage.value, "version": run}
    latest = latest_of_run(output_root, run)
    if latest:
        done = load_checkpoint(output_root, latest)
        if done.state.get("complete"):
            return out | _result(output_root, run, latest, sh_manifest, reused=True)
    plan = data_plan(sh_dir, sh_manifest, stage, config, workers)
    steps_per_epoch = max(1, plan.steps_per_epoch())
    loop_config = LoopConfig(
        train=config, encoder=enc, spec=spec, root=output_root, run=run, data=plan,
        total_steps=steps_per_epoch * config.epochs, init=init_ref,
        # A restart after a failure always resumes; --no-resume only ignores older steps.
        ignore_checkpoint=None if resume else latest,
        stop_at_step=stop_at_step, log_rows=log_rows, validation=validation)
    from loom.pipelines.ray.session import ensure_ray

    ensure_ray()
    timings: dict[str, float] = {}
    with timed(timings, "train_s"):
        fit(loop_config, workers, max_failures)
    if stop_at_step and not load_checkpoint(output_root, resolve(output_root, run)).state.get(
            "complete"):
        return out | {"stopped_at": stop_at_step}
    storage.write_atomic(storage.join(output_root, run, "lineage.json"), json.dumps({
        "shards": sh_dir, "shards_version": sh_manifest.version, "stage": stage.value,
        "init": init_ref[1] if init_ref else None, "config": config.model_dump(),
    }, default=str).encode())
    ckpt = resolve(output_root, run)
    return out | _result(output_root, run, ckpt, sh_manifest, reused=False) | {"timings": timings}


def on_trunk(config: TrainConfig, spec, enc: EncoderConfig, sh_dir: str,
             sh_manifest: mf.Manifest) -> tuple[EncoderConfig, object]:
    """The encoder config and spec on `config.trunk`: the spec then carries the trunk's
    tokenizer, which every later stage (eval, mine, backfill) applies. Exit 2 for a
    folder loom cannot use, or shards without their text (made before schema 3)."""
    from loom.models.trunk import TrunkError, trunk_encoder_config

    _needs_text(sh_dir, sh_manifest)
    dims = config.embed_dims if "embed_dims" in config.model_fields_set else None
    try:
        enc, tokenizer_json = trunk_encoder_config(config.trunk, enc, dims)
    except TrunkError as exc:
        raise BadInput(str(exc)) from None
    return enc, spec.model_copy(update={"tokenizer_json": tokenizer_json,
                                        "vocab_size": enc.vocab_size})


def _needs_text(sh_dir: str, sh_manifest: mf.Manifest) -> None:
    if sh_manifest.schema_version < 3:
        raise BadInput(f"{sh_dir} (schema {sh_manifest.schema_version}) holds token ids "
                       "without their text; an HF trunk re-tokenizes text: reshard it")


def validation_of(val_shards: str | None, every: int, rows: int,
                  keep_best: bool) -> Validation | None:
    """The held-out slice's files and schedule, or None; bad options exit 2."""
    if not val_shards:
        if keep_best:
            raise BadInput("--keep best needs --val-shards (held-out shards to score)")
        return None
    if every < 1 or rows < 1:
        raise BadInput(f"--val-every and --val-rows must be >= 1 (got {every}, {rows})")
    try:
        val_dir, val_manifest = mf.resolve_input(storage.absolute(val_shards))
    except FileNotFoundError as exc:
        raise BadInput(f"--val-shards: {exc}") from None
    if "shards" not in val_manifest.tables or not val_manifest.tables["shards"]:
        raise BadInput(f"--val-shards {val_dir} is not a shards dataset with rows")
    return Validation(files=val_manifest.files(val_dir, "shards"), every=every, rows=rows,
                      keep_best=keep_best)


def data_plan(sh_dir: str, sh_manifest: mf.Manifest, stage: TrainStage, config: TrainConfig,
              workers: int) -> DataPlan:
    """Which rows each rank trains on, per step: a pure function of these inputs."""
    records = sh_manifest.tables["shards"]
    if len(records) < workers:
        raise BadInput(f"{len(records)} shard files for {workers} workers: each worker reads "
                       "its own files; reshard with fewer rows per shard")
    batching = config.batching or (Batching.ALIGNED if stage == TrainStage.FT
                                   else Batching.MIXED)
    return DataPlan(files=sh_manifest.files(sh_dir, "shards"), rows=[r.rows for r in records],
                    world=workers, batch_size=config.batch_size, seed=config.seed,
                    batching=batching, bucket_by=tuple(config.bucket_by),
                    weights=config.bucket_weights)


def _result(root: str, run: str, ckpt: str, sh_manifest: mf.Manifest, reused: bool) -> dict:
    state = json.loads(storage.read_bytes(storage.join(root, ckpt, "state.json")))
    best = storage.join(root, run, BEST)
    return {
        "uri": storage.join(root, run),
        "checkpoint": ckpt,
        **({"best": json.loads(storage.read_bytes(best))} if storage.exists(best) else {}),
        "checkpoint_root": root,
        "datasets": {"checkpoint": storage.join(root, ckpt),
                     "metrics": storage.join(root, run, "metrics.parquet")},
        "counts": {"steps": state["step"], "rows": sh_manifest.counts["rows"],
                   "epochs": math.ceil(state["data_position"].get("epoch", 0))},
        "reused": reused,
    }
