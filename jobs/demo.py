"""`loom demo`: the whole chain on a generated corpus, in one process and one Ray session.

The chain is a job spec built in code (`demo_spec`), run by the same runner as `loom run`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from loom.jobs.corpus import World, generate_corpus
from loom.jobs.report import write_report
from loom.pipelines.engine import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage
from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from loom.jobs.spec import JobSpec

DONE = "_corpus_done.json"


MULTIMODAL_SIZES = {"images": 160, "texts": 160, "pft_epochs": 6, "ft_epochs": 3}


class DemoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    images: int = Field(600, ge=1)
    texts: int = Field(600, ge=1)
    seed: int = Field(0, ge=0)
    world: World = "simple"  # "rich": two-object scenes in near-miss families (issue 6)
    engine: Engine = Engine.BEAM
    pft_epochs: int = Field(8, ge=1)
    ft_epochs: int = Field(3, ge=1)
    batch_size: int = Field(64, ge=1)
    rows_per_shard: int = Field(512, ge=1)
    # hf:PATH: train on a Hugging Face trunk (loom train --trunk) at fine-tuning rates
    trunk: str | None = None

    @model_validator(mode="after")
    def _world_sizes(self) -> DemoConfig:
        """The multimodal world is smaller by default (a clip costs more than an image;
        the corpus adds half as many videos, clips and records as images)."""
        if self.world == "multimodal":
            for name, n in MULTIMODAL_SIZES.items():
                if name not in self.model_fields_set:
                    object.__setattr__(self, name, n)
        return self


def make_corpus(root: str, images: int, texts: int, seed: int, world: World = "simple") -> dict:
    """A version of the corpus keyed by its generator config: reruns reuse it."""
    cfg: dict = {"images": images, "texts": texts, "seed": seed}
    if world != "simple":  # the simple world keeps its version ids
        cfg["world"] = world
    version = mf.version_id("corpus", [], cfg)
    out = storage.join(root, version)
    done = storage.join(out, DONE)
    if storage.exists(done):
        counts = json.loads(storage.read_bytes(done))
        reused = True
    else:
        counts = generate_corpus(out, images, texts, seed, world=world)
        storage.write_atomic(done, json.dumps(counts).encode())
        reused = False
    return {"stage": "corpus", "version": version, "uri": out, "reused": reused,
            "datasets": {"media": storage.join(out, "media"),
                         "ground_truth": storage.join(out, "ground_truth.jsonl")},
            "counts": counts}


def demo_spec(workdir: str, cfg: DemoConfig) -> JobSpec:
    """The demo chain as a job spec: corpus -> ingest -> synth -> shard -> pft -> mine ->
    shard -> ft -> eval, each writing where `loom demo` always wrote (so versions carry over)."""
    from loom.jobs.spec import JobSpec

    w = storage.absolute(workdir)

    def step(stage: str, step_id: str, out: str, **fields) -> dict:
        return {"stage": stage, "id": step_id, "output": storage.join(w, out), **fields}

    train = {"batch_size": cfg.batch_size, "seed": cfg.seed}
    # a pretrained trunk is fine-tuned, not trained: rates 10x below loom's own encoder's
    pft_lr, ft_lr = (1e-4, 5e-5) if cfg.trunk else (1e-3, 5e-4)
    if cfg.trunk:
        train["trunk"] = cfg.trunk
    shard = {"rows_per_shard": cfg.rows_per_shard, "seed": cfg.seed}
    stages = [
        step("corpus", "corpus", "corpus", images=cfg.images, texts=cfg.texts, seed=cfg.seed,
             world=cfg.world),
        step("ingest", "ingest", "examples", input="${corpus}"),
        step("synth", "synth", "pairs", examples="${ingest}"),
    ]
    pairs = "${synth}"
    if cfg.world == "multimodal":  # natural pairs (a record's caption, a clip's own audio)
        stages.append(step("pairs", "natural", "natural", examples="${ingest}",
                           mix=["${synth}"]))
        pairs = "${natural}"
    stages += [
        step("shard", "shard_pft", "shards", input=pairs, **shard),
        step("train", "train_pft", "checkpoints", shards="${shard_pft}", train_stage="pft",
             config={"epochs": cfg.pft_epochs, **train,
                     **({"lr": pft_lr} if cfg.trunk else {})}),
        step("mine", "mine", "triples", pairs=pairs, checkpoint="${train_pft}"),
        step("shard", "shard_ft", "shards", input="${mine}", **shard),
        step("train", "train_ft", "checkpoints", shards="${shard_ft}", train_stage="ft",
             init="${train_pft}", config={"epochs": cfg.ft_epochs, "lr": ft_lr,
                                          "warmup_steps": 5, **train}),
        step("eval", "eval", "eval", pairs=pairs, checkpoint="${train_ft}",
             ground_truth="${corpus}", seed=cfg.seed),
    ]
    return JobSpec(name="demo", workdir=w, engine=cfg.engine, stages=stages)


def run_demo(workdir: str, cfg: DemoConfig, log=print) -> dict:
    """`demo_spec` run like `loom run`, plus its report as a last step."""
    from loom.jobs.run import eval_of, run_steps

    spec = demo_spec(workdir, cfg)
    stages = run_steps(spec, log, prefix="loom demo")
    eval_table = eval_of(spec, stages) or {}
    start = time.perf_counter()
    report = write_report(storage.join(spec.workdir, "reports"), dict(stages), eval_table)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    stages["report"] = report
    log(f"[loom demo] report       {'reused' if report['reused'] else 'done':<7} "
        f"{report['wall_s']:>6.1f}s  {report['version']}")
    return {
        "stage": "demo",
        "report": report["report"],
        "report_html": report["datasets"]["html"],
        "eval": eval_table,
        "reused": [n for n, s in stages.items() if s.get("reused")],
        "stages": stages,
        "checkpoint": stages["train_ft"]["checkpoint"],
    }
