"""`run_spec`: a JobSpec's steps in order, in one process (the stages share one Ray session).

A `${id}` reference becomes the concrete output of that earlier step: a dataset's version
URI, or a train step's (checkpoint id, checkpoint root). Each stage function finds its own
output version when it already exists and returns `reused: True`, so a rerun of an unchanged
spec does no work. Spec values are passed as plain arguments, never through a shell or eval.
"""

from __future__ import annotations

import time

from loom.jobs.spec import (
    EvalStep,
    IngestStep,
    JobSpec,
    MineStep,
    ShardStep,
    SynthStep,
    TrainStep,
    format_loc,
    ref_target,
    reference_errors,
)
from loom.schemas import storage
from loom.schemas.spec import PreprocessingSpec


def _dataset(value: str, done: dict[str, dict]) -> str:
    target = ref_target(value)
    return done[target]["uri"] if target else storage.absolute(value)


def _checkpoint(value: str, root: str | None, done: dict[str, dict]) -> tuple[str, str | None]:
    target = ref_target(value)
    if target:
        return done[target]["checkpoint"], done[target]["checkpoint_root"]
    return value, storage.absolute(root) if root else None


def run_step(step, spec: JobSpec, done: dict[str, dict]) -> dict:
    from loom.pipelines.evaluate import run_eval
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.mine import run_mine
    from loom.pipelines.shard import run_shard
    from loom.pipelines.synth import run_synth
    from loom.pipelines.train import run_train

    out = step.output_root(spec.workdir)
    if isinstance(step, IngestStep):
        return run_ingest(storage.absolute(step.input), out,
                          PreprocessingSpec(image_size=step.image_size), spec.engine)
    if isinstance(step, SynthStep):
        return run_synth(_dataset(step.examples, done), out, llm=step.llm, engine=spec.engine,
                         heldout_fraction=step.heldout_fraction)
    if isinstance(step, ShardStep):
        return run_shard(_dataset(step.input, done), out, step.rows_per_shard, step.seed,
                         spec.engine, step.target_mb, step.weights)
    if isinstance(step, TrainStep):
        init, init_root = (_checkpoint(step.init, step.init_root, done) if step.init
                           else (None, None))
        return run_train(_dataset(step.shards, done), out, step.train_stage, step.config,
                         init=init, init_root=init_root, workers=step.workers)
    if isinstance(step, MineStep):
        ckpt, root = _checkpoint(step.checkpoint, step.checkpoint_root, done)
        return run_mine(_dataset(step.pairs, done), out, ckpt, root, step.config)
    if isinstance(step, EvalStep):
        ckpt, root = _checkpoint(step.checkpoint, step.checkpoint_root, done)
        truth = storage.absolute(step.ground_truth) if step.ground_truth else None
        return run_eval(_dataset(step.pairs, done), ckpt, root, out, truth, step.seed,
                        step.max_queries)
    raise TypeError(f"unknown step {type(step).__name__}")


def run_spec(spec: JobSpec, log=print) -> dict:
    """Runs every step in order; {"stage": "run", "name", "stages", "reused", "eval"}."""
    problems = reference_errors(spec)  # a spec built with model_construct skips validation
    if problems:
        raise ValueError(f"{format_loc(problems[0][0])}: {problems[0][1]}")
    from loom.pipelines.cluster import check_spec_paths

    check_spec_paths(spec)  # a multi-node cluster refuses local paths before any work
    stages: dict[str, dict] = {}
    eval_table: dict | None = None
    from loom.pipelines.beam.runner import beam_options

    for step in spec.stages:
        start = time.perf_counter()
        with beam_options(spec.beam_options):
            res = run_step(step, spec, stages)
        res["wall_s"] = round(time.perf_counter() - start, 1)
        stages[step.id] = res
        if isinstance(step, EvalStep):
            eval_table = res.get("eval", {})
        log(f"[loom run {spec.name}] {step.id:<12} {step.stage:<6} "
            f"{'reused' if res.get('reused') else 'done':<7} {res['wall_s']:>6.1f}s  "
            f"{res.get('version')}")
    from loom.jobs.report import write_report
    from loom.schemas import storage

    report = write_report(storage.absolute(storage.join(spec.workdir, "reports")), dict(stages),
                          eval_table or {})
    return {
        "stage": "run",
        "name": spec.name,
        "report": report["report"],
        "report_html": report["datasets"]["html"],
        "stages": stages,
        "reused": [i for i, s in stages.items() if s.get("reused")],
        "eval": eval_table,
    }
