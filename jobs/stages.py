"""loom's stages, registered: one typed config and one `run(cfg, ctx)` each.

A config holds what the stage needs (inputs, settings), never where it writes or on what
engine: those come in the `Context` (the CLI's --output/--engine, or the spec's workdir and
engine). Pipelines are imported inside each `run`, so loading the registry stays light.
"""

from __future__ import annotations

from typing import Annotated, Literal

from loom.jobs.registry import Context, Flag, Ref, StageConfig, Uri, register
from loom.pipelines.train import TrainConfig, TrainStage
from loom.schemas.records import Split
from loom.synth.budget import Budget
from loom.synth.client import LLMConfig
from loom.synth.filters import FilterConfig
from loom.synth.limits import RateLimits
from loom.transforms.mining import MiningConfig
from pydantic import Field, ValidationInfo, field_validator

CHECKPOINT_STEPS = {"train": "checkpoint", "soup": "checkpoint"}
CHECKPOINT = Ref(CHECKPOINT_STEPS, root="checkpoint_root", literal_needs_root=True)
LLM_FLAGS = {"llm.backend": Flag("--llm", "offline|gemini|vertex"),
             "llm.model": Flag("--model", "LLM model name"),
             "llm.base_url": Flag("--base-url", "override the API endpoint"),
             "llm.project": Flag("--project", "Google Cloud project (--llm vertex)"),
             "llm.location": Flag("--location", "Vertex AI region (--llm vertex)")}


NonNegative = Annotated[float, Field(ge=0)]


def _script(value: str) -> str | None:
    return None if value == "none" else value


# --- corpus ---------------------------------------------------------------------------

class CorpusConfig(StageConfig):
    images: int = Field(200, ge=1, description="images in the corpus")
    texts: int = Field(200, ge=1, description="text passages in the corpus")
    seed: int = Field(0, ge=0)
    world: Literal["simple", "rich", "multimodal"] = Field(
        "simple", description="simple (one shape), rich (one or two objects in near-miss "
                              "families) or multimodal (rich scenes also as video, audio, PDF "
                              "pages and records)")


@register("corpus", CorpusConfig, help="Generate the offline demo corpus (scenes as images and "
          "texts, plus bad files).")
def corpus(cfg: CorpusConfig, ctx: Context) -> dict:
    from loom.jobs.demo import make_corpus

    return make_corpus(ctx.output_root(), cfg.images, cfg.texts, cfg.seed, cfg.world)


# --- ingest ---------------------------------------------------------------------------

class IngestConfig(StageConfig):
    input: Uri = Field(description="raw prefix: local folder or gs://")
    image_size: int = Field(48, ge=8, le=1024, description="image side in pixels")
    max_frames: int = Field(32, ge=1, le=256, description="video frames sampled per clip (1 fps)")
    allow_hosts: tuple[str, ...] = Field(
        (), description="host whose http(s) manifest references may be fetched (repeatable)")


@register("ingest", IngestConfig, engine=True,
          refs={"input": Ref({"corpus": "datasets.media"})},
          flags={"allow_hosts": Flag("--allow-host")},
          help="Decode and tokenize every file under a prefix into Examples + Rejected.")
def ingest(cfg: IngestConfig, ctx: Context) -> dict:
    from loom.pipelines.ingest import run_ingest
    from loom.schemas.spec import PreprocessingSpec
    from loom.transforms.remote import RemoteConfig

    return run_ingest(cfg.input, ctx.output_root(),
                      PreprocessingSpec(image_size=cfg.image_size,
                                        video_max_frames=cfg.max_frames),
                      ctx.engine, remote=RemoteConfig(allowed_hosts=cfg.allow_hosts))


# --- natural pairs --------------------------------------------------------------------

class PairsConfig(StageConfig):
    examples: Uri = Field(description="examples root or version (loom ingest)")
    rules: tuple[Literal["record", "av_track", "page_text", "title_body"], ...] = Field(
        ("record", "av_track", "page_text", "title_body"),
        description="structures to pair: record (caption<->media in a record), av_track "
                    "(video<->its audio track), page_text (page render<->its text layer), "
                    "title_body (repeatable)")
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    mix: tuple[Uri, ...] = Field((), description="synthetic pairs versions to copy in "
                                                 "(repeatable)")


@register("pairs", PairsConfig,
          refs={"examples": Ref({"ingest": "uri"}, literal_kinds=("ingest",)),
                "mix": Ref({"synth": "uri"}, literal_kinds=("synth",))},
          flags={"rules": Flag("--rule"), "mix": Flag("--mix")},
          help="Pairs from structure, no LLM (caption<->image, video<->its audio track, "
               "page render<->text layer, title<->body); --mix adds synth's pairs.")
def pairs(cfg: PairsConfig, ctx: Context) -> dict:
    from loom.pipelines.pairs import run_pairs

    return run_pairs(cfg.examples, ctx.output_root(), tuple(cfg.rules), cfg.heldout_fraction,
                     tuple(cfg.mix))


# --- synth and relabel ------------------------------------------------------------------

class SynthConfig(StageConfig):
    examples: Uri = Field(description="examples root or version (loom ingest)")
    llm: LLMConfig = LLMConfig()
    heldout_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    kinds: dict[str, list[str]] | None = Field(
        None, description="query kinds per modality (default: synth.stage.DEFAULT_KINDS)")
    budget: Budget = Budget()
    limits: RateLimits = RateLimits()
    filters: FilterConfig = FilterConfig()
    dry_run: bool = Field(False, description="only plan: calls, media tokens per modality, "
                          "cost online and in batch (a table on stderr, JSON on stdout)")
    mode: Literal["online", "batch"] = Field(
        "online", description="online calls, or the Batch API (about half the price; "
        "asynchronous, resumable)")
    checkpoint: str | None = Field(None, description="round-trip filter with this checkpoint")
    checkpoint_root: Uri = "checkpoints"


@register("synth", SynthConfig, engine=True,
          refs={"examples": Ref({"ingest": "uri"}, literal_kinds=("ingest",)),
                "checkpoint": Ref(CHECKPOINT_STEPS, root="checkpoint_root")},
          flags={**LLM_FLAGS,
                 "budget.max_calls": Flag("--max-calls", "LLM call budget (exit 3 when hit)"),
                 "budget.max_tokens": Flag("--max-tokens", "LLM token budget (exit 3)"),
                 "budget.max_cost": Flag("--max-cost", "USD budget, synth/prices.yaml (exit 3)"),
                 "limits.concurrency": Flag("--concurrency", "requests in flight per worker"),
                 "limits.requests_per_minute": Flag("--rpm", "requests per minute (all workers)"),
                 "limits.tokens_per_minute": Flag("--tpm", "tokens per minute (all workers)"),
                 "filters.script": Flag("--script", "also require a script (latin, cyrillic, "
                                        "cjk, ...; none: off)", parse=_script),
                 "filters.language": Flag("--language", "query language: auto (the "
                                          "document's, by py3langid), an ISO code, or none",
                                          parse=_script),
                 "filters.roundtrip_k": Flag("--roundtrip-k", "round trip: positive within top k")},
          help="Write synthetic query/positive pairs with an LLM (responses cached); "
               "`loom synth diff OLD NEW` compares two versions.")
def synth(cfg: SynthConfig, ctx: Context) -> dict:
    from loom.pipelines.synth import run_synth

    out = run_synth(cfg.examples, ctx.output_root(), cfg.llm, ctx.engine, cfg.heldout_fraction,
                    dry_run=cfg.dry_run, budget=cfg.budget, limits=cfg.limits,
                    filters=cfg.filters, checkpoint=cfg.checkpoint,
                    checkpoint_root=cfg.checkpoint_root, kinds=cfg.kinds, mode=cfg.mode)
    if out.get("plan"):  # a dry run: the plan as a table for people, JSON on stdout
        import sys

        from loom.synth.budget import plan_table

        print(plan_table(out["plan"]), file=sys.stderr)
    return out


class RelabelConfig(StageConfig):
    triples: Uri = Field(description="triples root or version (loom mine)")
    llm: LLMConfig = LLMConfig()
    negatives: int = Field(3, ge=1, description="hard negatives the LLM keeps per query")
    limits: RateLimits = RateLimits()


@register("relabel", RelabelConfig, command=("synth", "relabel"),
          refs={"triples": Ref({"mine": "uri"}, literal_kinds=("mine",))},
          flags={**LLM_FLAGS, "limits.concurrency": Flag("--concurrency", "requests in flight")},
          help="FRet relabel: the LLM picks each query's best positive and hard negatives among "
               "its mined candidates; the `relabels` table records which positives changed.")
def relabel(cfg: RelabelConfig, ctx: Context) -> dict:
    from loom.pipelines.synth_relabel import run_relabel

    return run_relabel(cfg.triples, ctx.output_root(), cfg.llm, cfg.negatives, cfg.limits)


# --- shard and train ----------------------------------------------------------------------

class ShardConfig(StageConfig):
    input: Uri = Field(description="pairs or triples root or version")
    rows_per_shard: int = Field(512, ge=1)
    seed: int = Field(0, ge=0)
    target_mb: float | None = Field(None, gt=0, description="shard size in MB (overrides rows)")
    weights: dict[str, NonNegative] = Field(
        {}, description="KEY=W: sample rows of a query kind or positive modality W times "
                        "(repeatable)")
    split: Split = Field(Split.TRAIN, description="train|heldout (heldout: a validation slice "
                                                  "for loom train --val-shards)")


@register("shard", ShardConfig, engine=True,
          refs={"input": Ref({"synth": "uri", "pairs": "uri", "mine": "uri", "relabel": "uri"},
                             literal_kinds=("synth", "pairs", "mine", "relabel"))},
          flags={"weights": Flag("--weight")},
          help="Shuffle and pack train-split pairs/triples into fixed-size Parquet shards.")
def shard(cfg: ShardConfig, ctx: Context) -> dict:
    from loom.pipelines.shard import run_shard

    return run_shard(cfg.input, ctx.output_root(), cfg.rows_per_shard, cfg.seed, ctx.engine,
                     cfg.target_mb, cfg.weights, cfg.split)


class TrainStepConfig(StageConfig):
    shards: Uri = Field(description="shards root or version")
    train_stage: TrainStage = Field(TrainStage.PFT, description="pft|ft")
    init: str | None = Field(None, description="checkpoint id to start from")
    init_root: Uri | None = Field(None, description="root of --init (default: --output)")
    config: TrainConfig = TrainConfig()
    workers: int = Field(1, ge=1)
    resume: bool = Field(True, description="continue an incomplete run of the same id")
    val_shards: Uri | None = Field(None, description="held-out shards (loom shard --split "
                                                     "heldout) scored while training")
    val_every: int = Field(100, ge=1, description="steps between validations")
    val_rows: int = Field(512, ge=1, description="rows of --val-shards scored")
    keep: Literal["all", "best"] = Field(
        "all", description="best: also mark the best val_r1's checkpoint (RUN/best)")


@register("train", TrainStepConfig,
          refs={"shards": Ref({"shard": "uri"}, literal_kinds=("shard",)),
                "val_shards": Ref({"shard": "uri"}, literal_kinds=("shard",)),
                "init": Ref(CHECKPOINT_STEPS, root="init_root")},
          flags={"train_stage": Flag("--stage"),
                 "config.epochs": Flag("--epochs"), "config.batch_size": Flag("--batch-size"),
                 "config.lr": Flag("--lr"), "config.temperature": Flag("--temperature"),
                 "config.learn_temperature": Flag(
                     "--learn-temperature/--no-learn-temperature",
                     "learn the temperature (from --temperature)"),
                 "config.batching": Flag("--batching", "mixed|aligned (default: aligned for ft, "
                                         "mixed for pft)"),
                 "config.bucket_weights": Flag("--bucket-weight", "BUCKET=W for aligned "
                                               "batches, e.g. caption/image=2 (repeatable)"),
                 "config.cross_worker_negatives": Flag(
                     "--cross-worker-negatives/--no-cross-worker-negatives",
                     "in-batch negatives from every worker's batch"),
                 "config.cache_chunk": Flag("--cache-chunk", "rows per chunk of a cached "
                                            "(GradCache) step; 0 = off"),
                 "config.grad_checkpointing": Flag(
                     "--grad-checkpointing/--no-grad-checkpointing",
                     "recompute activations in backward"),
                 "config.dim": Flag("--dim"), "config.layers": Flag("--layers"),
                 "config.heads": Flag("--heads"),
                 "config.embed_dims": Flag("--embed-dims", "Matryoshka sizes, e.g. 32,64,128"),
                 "config.trunk": Flag("--trunk", "hf:PATH: a local Hugging Face model "
                                      "(BERT-like) as the fusion trunk, its tokenizer "
                                      "replacing ingest's"),
                 "config": Flag("--config", "TrainConfig as a YAML/JSON file or inline",
                                whole=True)},
          help="Train the encoder with Ray Train (TorchTrainer; each worker reads its seeded "
               "shards).")
def train(cfg: TrainStepConfig, ctx: Context) -> dict:
    from loom.pipelines.train import run_train

    return run_train(cfg.shards, ctx.output_root(), cfg.train_stage, cfg.config, cfg.init,
                     cfg.init_root, cfg.workers, cfg.resume, val_shards=cfg.val_shards,
                     val_every=cfg.val_every, val_rows=cfg.val_rows,
                     keep_best=cfg.keep == "best")


class ExportConfig(StageConfig):
    checkpoint: str = Field(description="checkpoint id, run or latest")
    checkpoint_root: Uri = Field("checkpoints", description="checkpoint root")
    format: Literal["onnx", "hf", "sentence-transformers"] = Field(
        "onnx", description="onnx (every modality, collate documented), hf, "
                            "sentence-transformers (an HF trunk only)")


@register("export", ExportConfig, arguments=("checkpoint",),
          refs={"checkpoint": CHECKPOINT},
          help="Export a checkpoint for serving stacks (onnx: every modality).")
def export(cfg: ExportConfig, ctx: Context) -> dict:
    from loom.pipelines.export import ExportFormat, run_export

    return run_export(cfg.checkpoint, cfg.checkpoint_root, ExportFormat(cfg.format),
                      ctx.output_root())


class SoupConfig(StageConfig):
    checkpoints: list[str] = Field(min_length=1, description="checkpoint ids, runs or latest")
    root: Uri = Field("checkpoints", description="checkpoint root of the inputs")
    weights: tuple[NonNegative, ...] | None = Field(None, description="weights, e.g. 3,1")

    @field_validator("weights")
    @classmethod
    def _weights(cls, weights: tuple[float, ...] | None, info: ValidationInfo):
        n = len(info.data.get("checkpoints") or ())
        if weights is not None and len(weights) != n:
            raise ValueError(f"{len(weights)} weights for {n} checkpoints")
        if weights is not None and not any(weights):
            raise ValueError("weights are all 0")
        return weights


@register("soup", SoupConfig, arguments=("checkpoints",), output="optional",
          refs={"checkpoints": Ref(CHECKPOINT_STEPS, root="root")},
          help="Average checkpoints (uniform or weighted) into a new run; no input run is moved. "
               "--output: root for the new run (default: --root).")
def soup(cfg: SoupConfig, ctx: Context) -> dict:
    from loom.pipelines.soup import run_soup

    weights = list(cfg.weights) if cfg.weights is not None else None
    return run_soup(list(cfg.checkpoints), cfg.root, ctx.output_root(cfg.root), weights)


# --- mine, eval, backfill -------------------------------------------------------------------

class MineConfig(StageConfig):
    pairs: Uri = Field(description="pairs root or version")
    checkpoint: str = Field("latest", description="checkpoint id, run, or latest")
    checkpoint_root: Uri = Field("checkpoints", description="checkpoint root")
    corpus: Uri | None = Field(None, description="examples (default: the pairs' corpus)")
    config: MiningConfig = MiningConfig()
    cache: Uri | None = Field(None, description="embedding cache root (default: --output)")


@register("mine", MineConfig,
          refs={"pairs": Ref({"synth": "uri", "pairs": "uri"},
                             literal_kinds=("synth", "pairs")),
                "checkpoint": CHECKPOINT,
                "corpus": Ref({"ingest": "uri"}, literal_kinds=("ingest",))},
          flags={"config.negatives": Flag("--negatives", "negatives of the positive's modality"),
                 "config.cross_modal": Flag("--cross-modal", "extra negatives, e.g. "
                                            "image=1,text=1"),
                 "config": Flag("--config", "MiningConfig as a YAML/JSON file or inline",
                                whole=True)},
          help="Mine modality-aware hard negatives with an encoder checkpoint.")
def mine(cfg: MineConfig, ctx: Context) -> dict:
    from loom.pipelines.mine import run_mine

    return run_mine(cfg.pairs, ctx.output_root(), cfg.checkpoint, cfg.checkpoint_root,
                    cfg.config, cfg.corpus, cfg.cache)


class EvalConfig(StageConfig):
    pairs: Uri = Field(description="pairs root or version (held-out split)")
    checkpoint: str = Field("latest", description="checkpoint id, run, or latest")
    checkpoint_root: Uri = "checkpoints"
    ground_truth: Uri | None = Field(None, description="ground_truth.jsonl")
    seed: int = Field(0, ge=0)
    max_queries: int = Field(2000, ge=1)
    dims: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (), description="extra prefix sizes, e.g. 32,64 (truncation)")
    baseline_cap: int = Field(50_000, ge=1, description="gallery items the BM25 and "
                              "untrained baselines index (a seeded sample above it)")
    cache: Uri | None = Field(None, description="embedding cache root (default: --output); "
                              "mine's serves eval for the same checkpoint")


@register("eval", EvalConfig,
          refs={"pairs": Ref({"synth": "uri", "pairs": "uri"},
                             literal_kinds=("synth", "pairs")),
                "checkpoint": CHECKPOINT,
                "ground_truth": Ref({"corpus": "datasets.ground_truth"})},
          help="Held-out R@1/R@5/NDCG@10 per modality pair and Matryoshka size, beside "
               "baselines. The table goes to stderr; stdout's last line stays the JSON result.")
def evaluate(cfg: EvalConfig, ctx: Context) -> dict:
    from loom.pipelines.evaluate import format_table, run_eval

    out = run_eval(cfg.pairs, cfg.checkpoint, cfg.checkpoint_root, ctx.output_root(),
                   cfg.ground_truth, cfg.seed, cfg.max_queries, dims=cfg.dims,
                   baseline_cap=cfg.baseline_cap, cache_root=cfg.cache)
    ctx.echo(format_table(out.get("eval", {})))
    return out


class BackfillConfig(StageConfig):
    input: Uri = Field(description="raw prefix to embed: local folder or gs://")
    checkpoint: str = Field("latest", description="checkpoint id, run, or latest")
    checkpoint_root: Uri = Field("checkpoints", description="checkpoint root")
    dim: int | None = Field(None, ge=1, description="Matryoshka size (default: largest)")
    faiss_index: bool = Field(False, description="also write a FAISS index")


@register("backfill", BackfillConfig, engine=True,
          refs={"input": Ref({"corpus": "datasets.media"}), "checkpoint": CHECKPOINT},
          help="Embed every asset under a prefix with a checkpoint (incremental, resumable).")
def backfill(cfg: BackfillConfig, ctx: Context) -> dict:
    from loom.pipelines.backfill import run_backfill

    return run_backfill(cfg.input, ctx.output_root(), cfg.checkpoint, cfg.checkpoint_root,
                        cfg.dim, cfg.faiss_index, ctx.engine)


# --- report and gc --------------------------------------------------------------------------

class ReportConfig(StageConfig):
    workdir: Uri | None = Field(None, description="a workdir (loom demo / loom run); in a spec: "
                                                  "the spec's")


@register("report", ReportConfig, arguments=("workdir",), output="optional",
          help="One self-contained HTML page: counts, rejections, synth, negatives, loss, eval. "
               "--output: the HTML path (default WORKDIR/report.html).")
def report(cfg: ReportConfig, ctx: Context) -> dict:
    from loom.jobs.report_html import report_workdir

    return report_workdir(ctx.workdir_of(cfg.workdir, "report needs a WORKDIR"), ctx.output)


class GcConfig(StageConfig):
    root: Uri = Field(description="dataset root, or a workdir of roots")
    keep: int = Field(3, ge=1, description="newest versions to keep per root and stage")
    dry_run: bool = Field(True, description="only print the plan")
    yes: bool = Field(False, description="delete (same as --no-dry-run)")
    grace_hours: float = Field(6.0, ge=0, description="partial writes younger than this stay")


@register("gc", GcConfig, arguments=("root",), output="none",
          refs={"root": Ref({kind: "root" for kind in (
              "corpus", "ingest", "pairs", "synth", "relabel", "shard", "train", "soup", "mine", "eval",
              "backfill")})},
          flags={"yes": Flag("--yes")},
          help="Delete old versions nothing kept depends on, and stale partial writes (plan "
               "first).")
def gc(cfg: GcConfig, ctx: Context) -> dict:
    from loom.jobs.ops import gc as run_gc

    return run_gc(cfg.root, cfg.keep, dry_run=cfg.dry_run and not cfg.yes,
                  grace_s=cfg.grace_hours * 3600, log_line=ctx.log)


# --- forget ---------------------------------------------------------------------------------

class ForgetConfig(StageConfig):
    targets: list[str] = Field(min_length=1, description="asset ids (sha256) or source URIs")
    workdir: Uri | None = Field(None, description="workdir whose dataset roots hold the asset; "
                                                  "in a spec: the spec's")


@register("forget", ForgetConfig, arguments=("targets",), output="none",
          help="Take assets down: new versions of every dataset without them, caches purged; "
               "then `loom gc --yes` deletes the old versions.")
def forget(cfg: ForgetConfig, ctx: Context) -> dict:
    from loom.jobs.forget import run_forget

    return run_forget(list(cfg.targets), ctx.workdir_of(cfg.workdir, "forget needs --workdir"),
                      ctx.log)
