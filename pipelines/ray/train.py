"""The contrastive training loop on Ray Train's TorchTrainer.

Each rank reads its own seeded share of the shard files (pipelines/train_data.py), so a
resumed run sees exactly the rows the first run would have seen.

Rank 0 writes `<run>/progress.json` as it trains (throttled); the driver shows it as a bar
per epoch on a terminal (step, loss, samples/s, ETA) and as log records (structured with
--log-json). `<run>/metrics.parquet` holds every step of the run: it is rewritten at each
checkpoint, and a resumed run starts from the rows up to the step it resumes from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import threading
import time

import pyarrow as pa
import ray
import ray.train
import torch
from loom.models.checkpoint import BEST, load_checkpoint, resolve, save_checkpoint
from loom.models.embed import collate_groups
from loom.models.encoder import EncoderConfig
from loom.models.inputs import shard_item_prep
from loom.models.losses import ContrastiveModel, asset_keys
from loom.models.step import TrainBatch, cached_step, plain_step
from loom.models.trunk import build_encoder
from loom.pipelines.ray.session import ensure_ray
from loom.pipelines.train import TrainConfig
from loom.pipelines.train_data import DataPlan, ShardReader, iter_batches
from loom.pipelines.train_validation import SCORE, Validation, Validator, read_slice
from loom.schemas import storage
from loom.schemas.records import rows_of
from loom.schemas.spec import PreprocessingSpec
from pydantic import BaseModel, ConfigDict, Field
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

PROGRESS = "progress.json"
METRICS = "metrics.parquet"
log = logging.getLogger("loom.train")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warmup, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class TrainCollate:
    """Arrow TrainingRows -> TrainBatch: queries, positives then mined negatives.

    Runs in the data plan's prefetch thread (train_data.iter_batches), so JPEG decode,
    padding and patching overlap the previous step's compute.
    """

    def __init__(self, enc: EncoderConfig, max_negatives: int, prep=None):
        # prep: re-tokenizes each ITEM for an HF trunk (models.inputs.shard_item_prep)
        self.enc, self.max_negatives, self.prep = enc, max_negatives, prep

    def __call__(self, batch: pa.Table) -> TrainBatch:
        rows = rows_of(batch)  # features stay float16 arrays
        queries = [r["query"] for r in rows]
        docs = [r["positive"] for r in rows]
        docs += [n for r in rows for n in (r["negatives"] or [])[: self.max_negatives]]
        if self.prep:
            queries, docs = [self.prep(q) for q in queries], [self.prep(d) for d in docs]
        return TrainBatch(collate_groups(queries, self.enc), collate_groups(docs, self.enc),
                          asset_keys([r["positive"]["id"] for r in rows]),
                          asset_keys([d["id"] for d in docs]), len(rows), len(docs),
                          [r["pair_id"] for r in rows])


class LoopConfig(BaseModel):
    """Everything a train worker needs: built once by the driver (run_train), the same on
    every rank. Neither `stop_at_step` (a step budget: checkpoint there and stop) nor
    `log_rows` (a local folder of per-rank pair ids per step) is part of the run's id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    train: TrainConfig
    encoder: EncoderConfig
    spec: PreprocessingSpec
    root: str
    run: str
    data: DataPlan
    total_steps: int
    init: tuple[str, str] | None = None  # (checkpoint root, id) whose weights start the run
    # --no-resume: this run's checkpoint (and older steps) does not count; a restart after
    # a failure resumes from the steps written since.
    ignore_checkpoint: str | None = None
    stop_at_step: int | None = None
    log_rows: str | None = None
    validation: Validation | None = None  # a held-out slice scored every N steps
    threads: int = Field(1, ge=1)  # torch compute threads per worker (set by fit)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: TrainBatch,
               tc: TrainConfig, step: int, total: int, dims: tuple[int, ...], gather: bool,
               autocast) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on a collated batch (already on the device): learning rate,
    forward and backward (plain, or cached when tc.cache_chunk), clip, AdamW. `model` is
    the ContrastiveModel as prepared (DDP-wrapped with several workers)."""
    for g in opt.param_groups:
        g["lr"] = lr_at(step, total, tc.warmup_steps, tc.lr)
    opt.zero_grad(set_to_none=True)
    if tc.cache_chunk:
        base = model.module if hasattr(model, "module") else model
        terms, temperature = cached_step(base, batch, dims, gather, autocast, tc.cache_chunk)
    else:
        terms, temperature = plain_step(model, batch, dims, gather, autocast)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return terms, temperature


def _loop(config: dict) -> None:
    """Ray Train's per-worker entry: `config["loop"]` is the run's LoopConfig."""
    cfg: LoopConfig = config["loop"]
    tc, enc, root, run = cfg.train, cfg.encoder, cfg.root, cfg.run
    torch.manual_seed(tc.seed)
    torch.set_num_threads(cfg.threads)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    # An HF trunk starts from its folder's pretrained weights (a resume or --init then
    # loads over them).
    encoder = build_encoder(enc, pretrained=bool(enc.trunk) and not cfg.init)
    encoder.grad_checkpointing = tc.grad_checkpointing
    # In-batch negatives are the global batch unless turned off (models/distributed.py).
    gather = tc.cross_worker_negatives and ctx.get_world_size() > 1
    model = ContrastiveModel(encoder, tc.temperature, tc.learn_temperature)
    start_step, resumed = 0, []
    # A restarted worker group (FailureConfig) or a rerun continues from this run's newest
    # complete step: same weights, optimizer and data position.
    resume_from = latest_of_run(root, run)
    if resume_from == cfg.ignore_checkpoint:  # --no-resume: older steps don't count
        resume_from = None
    if resume_from:
        loaded = load_checkpoint(root, resume_from, with_optimizer=True)
        encoder.load_state_dict(loaded.model.state_dict())
        if "log_temperature" in loaded.state:
            model.log_temperature.data.fill_(loaded.state["log_temperature"])
        start_step = loaded.state["step"]
        resumed = [*loaded.state.get("resumed_from", []), start_step]
    elif cfg.init:
        init_root, init_id = cfg.init
        encoder.load_state_dict(load_checkpoint(init_root, init_id).model.state_dict())
    device = ray.train.torch.get_device()
    # A step may touch no patch or audio weights at all (an aligned text->text batch):
    # DDP must not wait for their gradients; likewise a batch without audio (or images)
    # leaves that modality's layers without a gradient on this rank.
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": True})
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    if resume_from and loaded.state.get("optimizer"):
        opt.load_state_dict(loaded.state["optimizer"])
    if rank == 0:  # lets an operator (or a test) find the process doing the work
        storage.write_atomic(storage.join(root, run, "worker.pid"), str(os.getpid()).encode())
    total = cfg.total_steps
    dims = tuple(enc.embed_dims)
    plan = cfg.data
    reader = ShardReader(plan.files)
    per_epoch = plan.steps_per_epoch()
    step, seen = start_step, 0
    metrics = _metrics_until(root, run, start_step) if resume_from else []
    progress = _ProgressWriter(root, run, total, tc.epochs, rank)
    base = model.module if hasattr(model, "module") else model
    prep = shard_item_prep(cfg.spec, enc)
    collate = TrainCollate(enc, tc.max_negatives, prep)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if tc.bf16 and device.type == "cuda"
                else contextlib.nullcontext())
    stop_at = cfg.stop_at_step
    train_config = tc.model_dump()
    val = cfg.validation
    validator = (Validator(read_slice(val.files, val.rows), enc, prep=prep)
                 if val and rank == 0 else None)
    best = _best_of_run(root, run) if resume_from else None
    t0 = time.perf_counter()
    first_epoch = start_step // max(1, per_epoch)
    for epoch in range(first_epoch, tc.epochs):
        steps = plan.epoch(epoch)
        first = start_step - epoch * per_epoch if epoch == first_epoch else 0
        t_data = time.perf_counter()
        # resume: start at the saved position; skipped steps are neither read nor collated
        for k, batch in enumerate(iter_batches(steps[first:], rank, reader, collate),
                                  start=first):
            t_step = time.perf_counter()
            if cfg.log_rows:
                _log_rows(cfg.log_rows, rank, step, steps[k].bucket, batch.ids)
            batch = batch.to(device)
            terms, temperature = train_step(model, opt, batch, tc, step, total, dims, gather,
                                            autocast)
            step += 1
            seen += batch.rows
            row = {"step": step, "epoch": epoch, "lr": opt.param_groups[0]["lr"],
                   "temperature": float(temperature.detach()),
                   "negatives": batch.n_docs - batch.rows, "bucket": steps[k].bucket,
                   "samples_per_s": seen / (time.perf_counter() - t0),
                   "data_wait_s": t_step - t_data, "compute_s": time.perf_counter() - t_step}
            row |= {name: float(v.detach()) for name, v in terms.items()}
            improved = False
            if validator is not None:
                due = step % val.every == 0 or step in (total, stop_at)
                row |= (validator(base.encoder, float(base.temperature())) if due
                        else validator.empty())
                improved = due and val.keep_best and (best is None or row[SCORE] > best[SCORE])
            metrics.append(row)
            progress.update(step, epoch, row["loss"], row["samples_per_s"])
            if rank == 0 and (step % tc.checkpoint_every == 0 or step == stop_at or improved):
                _write_metrics(root, run, metrics)  # before latest moves
                ckpt = save_checkpoint(root, run, step, base.encoder, opt, cfg.spec, enc,
                                       train_config,
                                       plan.position(epoch, k + 1, steps) | {"step": step},
                                       extra_state={"resumed_from": resumed,
                                                    "log_temperature":
                                                        float(base.log_temperature)})
                if improved:
                    best = {"checkpoint": ckpt, "step": step, SCORE: row[SCORE]}
                    storage.write_atomic(storage.join(root, run, BEST), json.dumps(best).encode())
            if step % tc.report_every == 0:
                ray.train.report({"step": step, "loss": row["loss"]})
            if step == stop_at:
                ray.train.report({"step": step, "stopped": True})
                return
            t_data = time.perf_counter()
    if rank == 0:
        save_checkpoint(root, run, step, base.encoder, opt, cfg.spec, enc, train_config,
                        {"epoch": tc.epochs, "step": step},
                        extra_state={"complete": True, "resumed_from": resumed,
                                     "log_temperature": float(base.log_temperature)})
        _write_metrics(root, run, metrics)
    last = metrics[-1] if metrics else {}
    progress.update(step, tc.epochs - 1, last.get("loss"), last.get("samples_per_s", 0.0),
                    force=True)
    ray.train.report({"step": step, "done": True})


def _best_of_run(root: str, run: str) -> dict | None:
    """The best validation step so far of a resumed run (--keep best), if any."""
    uri = storage.join(root, run, BEST)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def _metrics_until(root: str, run: str, step: int) -> list[dict]:
    """The rows a resumed run keeps: every step up to the checkpoint it resumes from."""
    uri = storage.join(root, run, METRICS)
    if not storage.exists(uri):
        return []
    return [r for r in storage.read_parquet([uri]).to_pylist() if r["step"] <= step]


def _write_metrics(root: str, run: str, metrics: list[dict]) -> None:
    if metrics:
        storage.write_parquet(pa.Table.from_pylist(metrics), storage.join(root, run, METRICS))


class _ProgressWriter:
    """Rank 0's position, at most twice a second, for the driver's bar."""

    def __init__(self, root: str, run: str, total: int, epochs: int, rank: int):
        self.uri = storage.join(root, run, PROGRESS)
        self.total, self.epochs, self.on = total, epochs, rank == 0
        self.last = 0.0

    def update(self, step: int, epoch: int, loss: float | None, samples_per_s: float,
               force: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (not force and now - self.last < 0.5):
            return
        self.last = now
        storage.write_atomic(self.uri, json.dumps({
            "step": step, "epoch": epoch, "epochs": self.epochs, "total_steps": self.total,
            "loss": loss, "samples_per_s": samples_per_s}).encode())


def watch_progress(root: str, run: str, stop: threading.Event, poll_s: float = 0.5,
                   log_every_s: float = 10.0) -> None:
    """The driver's view of training: a tqdm bar per epoch on a terminal, and a log record
    per epoch end and every `log_every_s` (JSON fields with --log-json)."""
    from tqdm import tqdm

    uri = storage.join(root, run, PROGRESS)
    bar, epoch_shown, last_log, last, first = None, None, 0.0, None, None
    tty = sys.stderr.isatty()
    while True:
        stopping = stop.wait(poll_s)
        try:
            p = json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None
        except (OSError, ValueError):
            p = None
        if p and p != last:
            last = p
            per_epoch = max(1, p["total_steps"] // max(1, p["epochs"]))
            in_epoch = p["step"] - p["epoch"] * per_epoch
            if p["epoch"] != epoch_shown:
                if bar is not None:  # that epoch is over, whatever step was seen last
                    bar.update(bar.total - bar.n)
                    bar.close()
                # epochs that ended between two looks still get their (full) bar
                for e in range(0 if epoch_shown is None else epoch_shown + 1, p["epoch"] + 1):
                    bar = tqdm(total=per_epoch, desc=f"epoch {e + 1}/{p['epochs']}",
                               unit="step", disable=not tty, leave=True, file=sys.stderr,
                               initial=per_epoch if e < p["epoch"] else max(0, in_epoch))
                    if e < p["epoch"]:
                        bar.close()
                epoch_shown = p["epoch"]
            else:
                bar.update(max(0, in_epoch - bar.n))
            if p["loss"] is not None:
                bar.set_postfix(loss=f"{p['loss']:.4f}",
                                samples_s=f"{p['samples_per_s']:.1f}", refresh=False)
            now = time.monotonic()
            first = first or (now, p["step"])
            if now - last_log >= log_every_s or in_epoch >= per_epoch or stopping:
                last_log = now
                left = p["total_steps"] - p["step"]
                sps = p["samples_per_s"] or 0.0
                rate = (p["step"] - first[1]) / (now - first[0]) if now > first[0] else 0.0
                eta = round(left / rate, 1) if rate > 0 else None
                loss = "-" if p["loss"] is None else f"{p['loss']:.4f}"
                log.info(f"train epoch {p['epoch'] + 1}/{p['epochs']} step {p['step']}/"
                         f"{p['total_steps']} loss {loss} {sps:.1f} samples/s eta "
                         f"{'-' if eta is None else f'{eta}s'}",
                         extra={"step": p["step"], "epoch": p["epoch"] + 1,
                                "epochs": p["epochs"], "total_steps": p["total_steps"],
                                "loss": p["loss"], "samples_per_s": round(sps, 2),
                                "eta_s": eta})
        if stopping:
            if bar is not None:
                bar.close()
            return


def fit(loop_config: LoopConfig, workers: int, max_failures: int = 1):
    """Runs the loop on `workers` ranks; each reads its own shard files (DataPlan) through
    loom's storage. Each worker reserves its node's share of CPUs less a little headroom
    (sizing.train_worker_cpus), runs that many torch threads, and asks for a GPU when the
    cluster (not this driver) has one. Workers spread over nodes; Ray Train's run state goes
    to the checkpoint root's storage (a gs:// root: the bucket, through loom's filesystem),
    never a node's own disk."""
    from loom.pipelines.ray.sizing import cluster_has_gpu, train_worker_cpus

    ensure_ray()
    root, run = loop_config.root, loop_config.run
    gpu = cluster_has_gpu()
    cpus = 1.0 if gpu else train_worker_cpus(workers)
    loop_config = loop_config.model_copy(update={"threads": max(1, int(cpus))})
    fs, path = storage.resolve(storage.join(root, "_ray"))
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"loop": loop_config},  # Ray Train passes a dict
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu,
                                     resources_per_worker={"CPU": cpus},
                                     placement_strategy="SPREAD"),
        run_config=RunConfig(storage_path=path, storage_filesystem=fs, name=run,
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    stop = threading.Event()
    watcher = threading.Thread(target=watch_progress, name="loom-train-progress", daemon=True,
                               args=(root, run, stop))
    watcher.start()
    try:
        return trainer.fit()
    finally:
        stop.set()
        watcher.join(timeout=10)


def _log_rows(where: str, rank: int, step: int, bucket: str, ids: list[str]) -> None:
    """Appends the pair ids a rank trains on at a step (a local debugging/test record)."""
    with open(os.path.join(where, f"rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, "bucket": bucket, "ids": ids}) + "\n")


def latest_of_run(root: str, run: str) -> str | None:
    try:
        return resolve(root, run)
    except FileNotFoundError:
        return None
