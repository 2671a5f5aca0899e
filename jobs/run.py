"""`run_spec`: a JobSpec's steps in order, in one process (the stages share one Ray session).

Each step's stage comes from the registry: its config (inside the step) with every `${id}`
replaced by what that earlier step produced (a dataset's version URI, a train step's
checkpoint id and root, a step's output root), then the stage's `run`. Each stage finds its
own output version when it already exists and returns `reused: True`, so a rerun of an
unchanged spec does no work. Spec values are passed as plain arguments, never through a
shell or eval.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from loom.jobs import registry
from loom.jobs.spec import JobSpec, format_loc, reference_errors
from loom.schemas import storage


def run_step(step, spec: JobSpec, done: registry.Done, log: Callable[..., None] = print) -> dict:
    """One step: its config with references resolved, checked, then run."""
    defn = registry.get(step.stage)
    index = spec.stages.index(step)
    cfg = registry.resolve_refs(defn, defn.config_of(step), done)
    registry.check_literal_inputs(defn, cfg, lambda field: f"stages[{index}].{field}")
    ctx = registry.Context(engine=spec.engine_options(),
                           output=storage.absolute(step.output) if step.output else None,
                           default_output=step.output_root(spec.workdir),
                           workdir=storage.absolute(spec.workdir), log=log)
    return defn.run(cfg, ctx)


def run_steps(spec: JobSpec, log: Callable[..., None] = print,
              prefix: str | None = None) -> dict[str, dict]:
    """Every step in order; {step id: its result (plus wall_s)}."""
    problems = reference_errors(spec)  # a spec built with model_construct skips validation
    if problems:
        raise ValueError(f"{format_loc(problems[0][0])}: {problems[0][1]}")
    done = registry.Done()
    prefix = prefix or f"loom run {spec.name}"
    for step in spec.stages:
        start = time.perf_counter()
        res = run_step(step, spec, done, log)
        res["wall_s"] = round(time.perf_counter() - start, 1)
        done.results[step.id], done.kinds[step.id] = res, step.stage
        done.roots[step.id] = step.output_root(spec.workdir)
        log(f"[{prefix}] {step.id:<12} {step.stage:<6} "
            f"{'reused' if res.get('reused') else 'done':<7} {res['wall_s']:>6.1f}s  "
            f"{res.get('version')}")
    return done.results


def eval_of(spec: JobSpec, stages: dict[str, dict]) -> dict | None:
    """The last eval step's table (None when the spec has no eval step)."""
    evals = [s.id for s in spec.stages if s.stage == "eval"]
    return stages[evals[-1]].get("eval", {}) if evals else None


def run_spec(spec: JobSpec, log=print) -> dict:
    """Runs every step in order; {"stage": "run", "name", "stages", "reused", "eval"}."""
    from loom.jobs.report import write_report

    stages = run_steps(spec, log)
    eval_table = eval_of(spec, stages)
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


def check_spec(spec: JobSpec) -> dict:
    """`loom run SPEC --check`: the spec loaded (types, bounds, wiring); nothing ran."""
    return {"stage": "check", "version": None, "name": spec.name, "reused": False,
            "datasets": {}, "counts": {"steps": len(spec.stages)},
            "steps": [{"id": s.id, "stage": s.stage} for s in spec.stages], "ok": True}
