"""`loom demo`: the whole chain on a generated corpus, in one process and one Ray session."""

from __future__ import annotations

import json
import time

from pydantic import BaseModel, ConfigDict, model_validator

from loom.jobs.corpus import World, generate_corpus
from loom.jobs.report import write_report
from loom.pipelines.runner import Engine
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.spec import PreprocessingSpec

DONE = "_corpus_done.json"


MULTIMODAL_SIZES = {"images": 160, "texts": 160, "pft_epochs": 6, "ft_epochs": 3}


class DemoConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    images: int = 600
    texts: int = 600
    seed: int = 0
    # "rich": two-object scenes in near-miss families; "multimodal": the rich scenes also
    # as videos, audio, PDF pages and records, with pairs in every direction
    world: World = "simple"
    engine: Engine = Engine.BEAM
    pft_epochs: int = 8
    ft_epochs: int = 3
    batch_size: int = 64
    rows_per_shard: int = 512

    @model_validator(mode="after")
    def _world_sizes(self) -> DemoConfig:
        """The multimodal world is smaller by default (a clip costs more than an image):
        half as many videos, clips and records as images, a quarter as many PDFs."""
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


def run_demo(workdir: str, cfg: DemoConfig, log=print) -> dict:
    from loom.pipelines.evaluate import run_eval
    from loom.pipelines.ingest import run_ingest
    from loom.pipelines.mine import run_mine
    from loom.pipelines.shard import run_shard
    from loom.pipelines.synth import run_synth
    from loom.pipelines.train import TrainConfig, TrainStage, run_train

    def step(name: str, fn, *args, **kwargs) -> dict:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        out["wall_s"] = round(time.perf_counter() - start, 1)
        stages[name] = out
        log(f"[loom demo] {name:<10} {'reused' if out.get('reused') else 'done':<7} "
            f"{out['wall_s']:>6.1f}s  {out.get('version')}")
        return out

    stages: dict[str, dict] = {}
    workdir = storage.absolute(workdir)
    root = lambda name: storage.join(workdir, name)  # noqa: E731
    corpus = step("corpus", make_corpus, root("corpus"), cfg.images, cfg.texts, cfg.seed,
                  cfg.world)
    spec = PreprocessingSpec()
    ingest = step("ingest", run_ingest, corpus["datasets"]["media"], root("examples"), spec,
                  cfg.engine)
    synth = step("synth", run_synth, ingest["uri"], root("pairs"), engine=cfg.engine)
    if cfg.world == "multimodal":  # natural pairs from structure, mixed with synth's
        from loom.pipelines.pairs import run_pairs

        synth = step("pairs", run_pairs, ingest["uri"], root("pairs_mixed"),
                     mix=(synth["uri"],))
    shard_pft = step("shard_pft", run_shard, synth["uri"], root("shards"), cfg.rows_per_shard,
                     cfg.seed, cfg.engine)
    ckpts = root("checkpoints")
    pft_cfg = TrainConfig(epochs=cfg.pft_epochs, batch_size=cfg.batch_size, seed=cfg.seed)
    pft = step("train_pft", run_train, shard_pft["uri"], ckpts, TrainStage.PFT, pft_cfg)
    mine = step("mine", run_mine, synth["uri"], root("triples"), pft["checkpoint"], ckpts)
    shard_ft = step("shard_ft", run_shard, mine["uri"], root("shards"), cfg.rows_per_shard,
                    cfg.seed, cfg.engine)
    ft_cfg = TrainConfig(epochs=cfg.ft_epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                         lr=5e-4, warmup_steps=5)
    ft = step("train_ft", run_train, shard_ft["uri"], ckpts, TrainStage.FT, ft_cfg,
              init=pft["checkpoint"])
    ev = step("eval", run_eval, synth["uri"], ft["checkpoint"], ckpts, root("eval"),
              corpus["datasets"]["ground_truth"], cfg.seed)
    eval_table = ev.get("eval", {})
    report = step("report", write_report, root("reports"), dict(stages), eval_table)
    return {
        "stage": "demo",
        "report": report["report"],
        "report_html": report["datasets"]["html"],
        "eval": eval_table,
        "reused": [n for n, s in stages.items() if s.get("reused")],
        "stages": stages,
        "checkpoint": ft["checkpoint"],
    }
