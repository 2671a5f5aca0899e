"""Synth: Examples -> Pairs (with their split) through the google-genai client.

The `offline` backend starts loom's local Gemini-compatible server for the run; the
response cache lives next to the output root, so a rerun or a changed prompt pays only
for what changed. A budget (calls, tokens, cost) is never exceeded: every example's
worst case is reserved before the run (synth.budget); what does not fit waits for a
rerun (exit 3). After the stage, run-wide filters drop duplicate queries and, with a
checkpoint, queries that do not retrieve their own positive in the top k.
"""

from __future__ import annotations

import contextlib
from functools import partial

import pyarrow as pa
from loom.pipelines.cluster import check_paths, is_multi_node
from loom.pipelines.common import cleanup_work, result, reuse, timed
from loom.pipelines.runner import (
    Engine,
    EngineOptions,
    StageTask,
    engine_kind,
    file_items,
    merge_results,
    run_stage,
)
from loom.pipelines.synth_dedupe import drop_duplicates
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.schemas.records import rows_of
from loom.synth import filters as qf
from loom.synth.batch import BatchRun, BatchSettings, check_work_uri
from loom.synth.budget import (  # BudgetExceeded: raised here, re-exported for callers
    ZERO,
    Budget,
    BudgetExceeded,
    Estimate,
    Ledger,
    PlanRow,
    call_estimate,
    cost_plan,
    media_tokens,
    price_for,
)
from loom.synth.budget import (
    usage as spent_usage,
)
from loom.synth.cache import ResponseCache
from loom.synth.client import LLMConfig, check_backend
from loom.synth.limits import RateLimits
from loom.synth.offline_server import offline_server
from loom.synth.prompts import PromptSet
from loom.synth.stage import STAT_NAMES, SynthConfig, SynthStage, media_parts, response_key

ENGINE_WORKERS = {Engine.BEAM: 2, Engine.RAY: 2}  # stage instances the rate limits are split over
# Work items (each writes a Pairs part) stop growing with the corpus past this many: past
# it, items get more rows. A bigger item costs no more on a retry: finished calls are in
# the response cache.
MAX_ITEMS = 2048


def run_synth(examples_uri: str, output_root: str, llm: LLMConfig | None = None,
              engine: Engine = Engine.BEAM, heldout_fraction: float = 0.2,
              kinds: dict[str, list[str]] | None = None, rows_per_item: int = 64,
              max_calls: int | None = None, dry_run: bool = False,
              budget: Budget | None = None, limits: RateLimits | None = None,
              filters: qf.FilterConfig | None = None, checkpoint: str | None = None,
              checkpoint_root: str = "checkpoints", engine_opts: dict | None = None,
              mode: str = "online", batch: BatchSettings | None = None) -> dict:
    """Pairs for every Example. `budget` (or `max_calls`) is never exceeded: past it, the
    run does the examples whose worst case fits, commits nothing and raises BudgetExceeded
    (CLI exit 3); a rerun pays only for what is still missing. `dry_run` only estimates
    the calls, tokens and cost needed (a plan per modality, priced online and in batch).
    `mode="batch"` sends the uncached calls through the Batch API first (at its price)
    and then writes the pairs from the cache. `checkpoint` turns on the round-trip filter."""
    if mode not in ("online", "batch"):
        raise ValueError(f"unknown synth mode {mode!r} (online|batch)")
    check_paths(examples=examples_uri, output=output_root)  # multi-node: no local paths
    llm = llm or LLMConfig()
    if not dry_run:  # a plan needs no credentials: it is made before anyone pays
        check_backend(llm)
    budget = budget or Budget()
    if max_calls is not None:
        budget = budget.model_copy(update={"max_calls": max_calls})
    filters = filters or qf.FilterConfig()
    workers = int((engine_opts or {}).get("workers", (engine_opts or {}).get("actors", 0))
                  or ENGINE_WORKERS[engine_kind(engine)])
    limits = (limits or RateLimits()).share(workers)
    price = price_for(llm.model)
    # a batch run is budgeted (and reported) at the Batch API's price
    run_price = price.batch() if price is not None and mode == "batch" else price
    ledger = Ledger(budget, run_price)  # refuses a cost budget without a price, before any work
    examples_uri, output_root = storage.absolute(examples_uri), storage.absolute(output_root)
    if mode == "batch" and not dry_run:  # vertex: the jobs' JSONL lives under the output
        check_work_uri(llm.backend, output_root)
    ex_dir, ex_manifest = mf.resolve_input(examples_uri)
    base = SynthConfig(llm=llm, heldout_fraction=heldout_fraction,
                       cache_uri=storage.join(output_root, "_llm_cache"), limits=limits,
                       filters=filters, **({"kinds": kinds} if kinds else {}))
    prompt_set = PromptSet.load(sorted({k for ks in base.kinds.values() for k in ks}))
    config = {
        "kinds": base.kinds,
        "heldout_fraction": heldout_fraction,
        "llm": llm.model_dump(exclude={"base_url", "timeout_s", "retry_attempts",
                                       "retry_initial_delay_s", "retry_max_delay_s",
                                       "retry_jitter_s", "inline_limit_bytes"}),
        "prompts": prompt_set.digest(),
    }
    if filters != qf.FilterConfig():
        config["filters"] = filters.model_dump()
    if checkpoint:
        from loom.models.checkpoint import resolve

        checkpoint_root = storage.absolute(checkpoint_root)
        config["roundtrip"] = {"checkpoint": resolve(checkpoint_root, checkpoint),
                               "k": filters.roundtrip_k}
    version = mf.version_id("synth", [ex_manifest.version], config)
    writer = mf.VersionWriter(output_root, "synth", version)
    if (done := reuse(writer, "synth", llm_calls=0, usage=spent_usage({}, price))) is not None:
        return done  # nothing spent by this run (the manifest's counts show the first run's)
    timings: dict[str, float] = {}
    examples_files = ex_manifest.tables.get("examples", [])
    budget_payload = None
    if budget.limited or dry_run:
        pending = _pending(ex_dir, ex_manifest, base, prompt_set, price)
        needed = sum((e for _, e in pending.values()), ZERO)
        tasks = sum(n for n, _ in pending.values())
        estimate = {"llm_calls_needed": tasks, "llm_calls_worst_case": needed.calls,
                    "input_tokens_worst_case": needed.input_tokens,
                    "output_tokens_worst_case": needed.output_tokens,
                    "cost_usd_worst_case": round(needed.cost(run_price), 6) if price else None}
        if dry_run:
            return {"stage": "synth", "version": version, "dry_run": True, "reused": False,
                    "datasets": {}, "counts": {"examples": len(pending),
                                               "llm_calls_needed": tasks},
                    "estimate": estimate,
                    "plan": cost_plan(_plan_rows(ex_dir, ex_manifest, base, prompt_set,
                                                 pending, price), price, mode)}
        keep = ledger.plan({eid: est for eid, (_, est) in pending.items()})
        if len(keep) < len(pending):
            examples_files, budget_payload = _within_budget(
                ex_dir, ex_manifest, writer, set(keep), budget, version, estimate)
    # One offline server for the run, on this driver's loopback, serves workers on this
    # machine only: on a multi-node cluster each worker starts its own (SynthStage.setup).
    server = (offline_server() if llm.backend == "offline" and not llm.base_url
              and not (engine_kind(engine) == Engine.RAY and is_multi_node()) else None)
    examples_dir = ex_dir if budget_payload is None else storage.join(writer.dir, "_work")
    batch_counts: dict[str, int] = {}
    with (server or contextlib.nullcontext(llm.base_url)) as base_url, timed(timings, "synth_s"):
        cfg = base.model_copy(update={"base_url": base_url,
                                      "staging_uri": storage.join(writer.dir, "_work", "media")})
        if mode == "batch":  # answers into the cache first; the stage below reads them
            with timed(timings, "batch_s"):
                batch_counts = _run_batch(cfg, examples_files, examples_dir,
                                          storage.join(writer.dir, "_work", "batch"), batch)
        items = file_items(examples_files, examples_dir, item_rows(examples_files, rows_per_item))
        tables, stats = merge_results(
            run_stage(engine, StageTask(partial(SynthStage, cfg), writer.dir), items,
                      **(engine_opts or {})))
    usage = _spent(stats, batch_counts, price, run_price)
    if budget.limited:  # settle: what the calls really used against what was reserved
        ledger.settle_run(usage)
    if budget_payload is not None:  # nothing is committed: the version stays invisible
        budget_payload["counts"]["llm_calls"] = stats.get("llm_calls", 0)
        budget_payload["usage"] = usage
        raise BudgetExceeded(budget_payload)
    for t in ("pairs", "rejected"):
        tables.setdefault(t, [])
    with timed(timings, "filters_s"):
        tables["pairs"], dropped, heldout_dropped = _run_filters(
            writer.dir, tables["pairs"], filters, config.get("roundtrip"), checkpoint_root,
            ex_dir, ex_manifest, engine, output_root)
    counts = {
        "examples": ex_manifest.rows("examples"),
        "pairs": sum(f.rows for f in tables["pairs"]),
        # counted by the stage and the filters' rewrites: the driver reads no Pairs rows
        "heldout_pairs": int(stats.get("heldout_pairs", 0)) - heldout_dropped,
        "rejected": sum(f.rows for f in tables["rejected"]),
    } | {k: int(stats.get(k, 0)) for k in STAT_NAMES} | dropped | batch_counts
    lineage = {
        "previous": _previous(output_root, writer.version, ex_manifest.version),
        "examples": ex_dir,
        "examples_version": ex_manifest.version,
        "prompt_set": prompt_set.digest(),
        "prompt_versions": {f"{k}.{m}" if m else k: v[0]
                            for (k, m), v in prompt_set.prompts.items()},
        "llm_model": llm.model,
        "backend": llm.backend,
        "spec_digest": ex_manifest.lineage.get("spec_digest"),
        "timings": timings,
        "extra": {"usage": usage},
    }
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("synth", manifest, writer.dir, False, llm_calls=counts["llm_calls"],
                  timings=timings, usage=usage)


def item_rows(files: list[FileRecord], rows_per_item: int) -> int:
    """Examples per work item: `rows_per_item`, or more where that would make more than
    MAX_ITEMS items (1M Examples at 64 a piece wrote 15,625 Pairs parts)."""
    return max(rows_per_item, -(-sum(f.rows for f in files) // MAX_ITEMS))


def _run_batch(cfg: SynthConfig, files: list[FileRecord], base: str, work_uri: str,
               settings: BatchSettings | None) -> dict[str, int]:
    """Every uncached call of the run through the Batch API, into the response cache."""
    rows = rows_of(storage.read_parquet([storage.join(base, f.path) for f in files])) \
        if files else []  # features stay float16 arrays
    stage = SynthStage(cfg)
    calls = [stage.call(ex, kind, partial(media_parts, ex))
             for ex in rows for kind in cfg.kinds.get(ex["modality"], [])]
    try:
        return BatchRun(stage.calls, cfg.llm.model, work_uri, settings).run(calls)
    finally:
        stage.teardown()


def _spent(stats: dict, batch_counts: dict, price, run_price) -> dict:
    """What the run spent: the online pass at the online price, batch answers (and their
    repairs) at the Batch API's."""
    online = spent_usage(stats, price)
    if not batch_counts:
        return online
    b = spent_usage({k.removeprefix("batch_"): v for k, v in batch_counts.items()}, run_price)
    out = {k: online[k] + b[k] for k in ("llm_calls", "requests", "input_tokens",
                                          "output_tokens")}
    out["cost_usd"] = (round(online["cost_usd"] + b["cost_usd"], 6)
                       if online["cost_usd"] is not None else None)
    out["batch_cost_usd"] = b["cost_usd"]
    return out


def _run_filters(version_dir: str, files: list[FileRecord], cfg: qf.FilterConfig,
                 roundtrip: dict | None, checkpoint_root: str, ex_dir: str,
                 ex_manifest: mf.Manifest, engine: Engine | str | EngineOptions = Engine.BEAM,
                 cache_root: str | None = None
                 ) -> tuple[list[FileRecord], dict[str, int], int]:
    """Run-wide filters over the written pairs; rewrites only the parts that lose rows.
    (The parts after, the counts dropped per filter, how many dropped pairs were held out.)

    The duplicate filter is an exchange on the stage's engine (`synth_dedupe`), the round
    trip Ray steps (`pipelines/ray/roundtrip.py`): the driver gets back file records and
    counts, never keys, pair_ids or vectors."""
    counts = {"filtered_roundtrip": 0}
    if not files or not (cfg.dedupe or roundtrip):
        return files, counts, 0
    counts["filtered_duplicate"], heldout = 0, 0
    if cfg.dedupe:
        files, counts["filtered_duplicate"], heldout = drop_duplicates(engine, version_dir,
                                                                       files)
    if not roundtrip or not files:
        return files, counts, heldout
    counts["filtered_roundtrip"], files, lost = _roundtrip(  # no root given: a cache for this run
        version_dir, files, roundtrip, checkpoint_root, ex_dir, ex_manifest,
        cache_root or storage.join(version_dir, mf.WORK))
    return files, counts, heldout + lost


def _roundtrip(version_dir: str, files: list[FileRecord], roundtrip: dict, checkpoint_root: str,
               ex_dir: str, ex_manifest: mf.Manifest, cache_root: str
               ) -> tuple[int, list[FileRecord], int]:
    """(queries dropped, the Pairs parts after, how many dropped were held out): the round
    trip as Ray steps (`pipelines/ray/roundtrip.py`); the driver passes file names, never
    rows or vectors."""
    n, misses = _roundtrip_misses(version_dir, files, roundtrip, checkpoint_root, ex_dir,
                                  ex_manifest, cache_root)
    if not n:
        return 0, files, 0
    import ray
    from loom.pipelines.ray import roundtrip as steps

    kept = ray.get([steps.drop_misses.remote(version_dir, f, misses) for f in files])
    return n, [f for f, _ in kept if f is not None], sum(h for _, h in kept)


def _roundtrip_misses(version_dir: str, files: list[FileRecord], roundtrip: dict,
                      checkpoint_root: str, ex_dir: str, ex_manifest: mf.Manifest,
                      cache_root: str) -> tuple[int, str]:
    """(how many, a Parquet file of their pair_ids): the text queries whose corpus
    positive is not in the top k of its modality's Examples for the checkpoint. Queries
    and galleries are embedded through the embedding cache under `cache_root` (mine's
    key: a later mine or round trip with this checkpoint embeds none of them again)."""
    import ray
    from loom.models.handler import EncoderHandler
    from loom.models.inputs import examples_spec
    from loom.pipelines.embed_cache import EmbeddingCache
    from loom.pipelines.mine import _units
    from loom.pipelines.ray import roundtrip as steps
    from loom.pipelines.ray.embed import embed_plan
    from loom.pipelines.ray.mine import embed_missing
    from loom.pipelines.ray.session import ensure_ray
    from loom.pipelines.ray.sizing import actor_deadline

    handler = EncoderHandler(checkpoint_root, roundtrip["checkpoint"])
    prep = handler.inputs()  # both sides with the checkpoint's own preprocessing
    prep.check_corpus(examples_spec(ex_dir), f"examples {ex_dir}")
    ensure_ray()
    work = storage.join(version_dir, mf.WORK, "roundtrip")
    pair_files = [storage.join(version_dir, f.path) for f in files]
    modalities = ray.get(steps.positive_modalities.remote(pair_files))
    out = storage.join(work, "misses.parquet")
    cache = EmbeddingCache(cache_root, {"checkpoint_root": checkpoint_root,
                                        "checkpoint": roundtrip["checkpoint"],
                                        "spec_digest": prep.spec.digest()},
                           prep.encoder.out_dim)
    ex_files = ex_manifest.tables.get("examples", [])
    units = [u | {"role": "gallery"} for u in _units(
        ex_files, [storage.join(ex_dir, f.path) for f in ex_files], work)] if modalities else []
    units += [{"kind": "examples", "role": "queries", "uris": [uri],
               "plan": storage.join(work, "queries", f"plan-{i:05d}.parquet")}
              for i, uri in enumerate(pair_files)]
    cache.ensure_key()
    actors, cpus, gpus = embed_plan()
    with actor_deadline("synth round trip", cpus, gpus):
        embed_missing(units, cache, handler, 0.0, actors, cpus, gpus,
                      read=partial(steps.read_unit, handler=handler, modalities=modalities))
    n = ray.get(steps.find_misses.remote(
        cache, [u["plan"] for u in units if u["role"] == "queries"],
        [u["plan"] for u in units if u["role"] == "gallery"], int(roundtrip["k"]), out))
    return n, out


def _previous(root: str, version: str, examples_version: str) -> str | None:
    """The newest other synth version over the same examples: what this one regenerates."""
    found = mf.newest_version(root, lambda m: (
        m.stage == "synth" and m.version != version
        and m.lineage.get("examples_version") == examples_version))
    return found[0] if found else None


def _pending(ex_dir: str, ex_manifest: mf.Manifest, base: SynthConfig,
             prompt_set: PromptSet, price=None) -> dict[str, tuple[int, Estimate]]:
    """Example id -> (calls it still needs, their worst case): its uncached kinds, with
    media counted at the model's rates (prices.yaml)."""
    llm = base.llm
    rates = {"rates": price.media} if price is not None else {}
    cache = ResponseCache(base.cache_uri)
    out = {}
    for ex in (ex for t in mf.read_table_parts(ex_dir, ex_manifest, "examples")
               for ex in rows_of(t)):  # one part's rows at a time
        todo = [kind for kind in base.kinds.get(ex["modality"], [])
                if not storage.exists(cache.uri(response_key(
                    llm, prompt_set.version(kind, ex["modality"]), ex["id"])))]
        est = sum((call_estimate(ex, prompt_set.text(k, ex["modality"]), llm.max_output_tokens,
                                 **rates) for k in todo), ZERO)
        out[ex["id"]] = (len(todo), est)
    return out


def _plan_rows(ex_dir: str, ex_manifest: mf.Manifest, base: SynthConfig, prompt_set: PromptSet,
               pending: dict[str, tuple[int, Estimate]], price) -> dict[str, PlanRow]:
    """The pending calls per modality: examples, calls, media tokens, worst case."""
    rates = {"rates": price.media} if price is not None else {}
    rows: dict[str, PlanRow] = {}
    columns = ["id", "modality", "parts", "metadata", "size_bytes"]
    for ex in (ex for t in mf.read_table_parts(ex_dir, ex_manifest, "examples", columns)
               for ex in rows_of(t)):
        n, est = pending.get(ex["id"], (0, ZERO))
        r = rows.setdefault(ex["modality"], PlanRow())
        r.examples += 1
        r.calls += n
        r.media_tokens += n * media_tokens(ex, **rates)
        r.worst = r.worst + est
    return rows


def _within_budget(ex_dir: str, ex_manifest: mf.Manifest, writer: mf.VersionWriter,
                   keep: set[str], budget: Budget, version: str, estimate: dict):
    """The examples whose worst case fits the budget (in id order), as work files (one per
    Examples part that keeps any)."""
    records, total = [], 0
    for n, table in enumerate(mf.read_table_parts(ex_dir, ex_manifest, "examples")):
        total += table.num_rows
        kept = table.filter(pa.array([i in keep for i in table.column("id").to_pylist()],
                                     pa.bool_()))
        if kept.num_rows:
            records.append(write_part(storage.join(writer.dir, "_work"), "budget",
                                      f"examples-{n:05d}", kept))
    payload = {"stage": "synth", "version": version, "stopped": "budget", "reused": False,
               "datasets": {}, "budget": budget.model_dump(exclude_none=True),
               "estimate": estimate,
               "counts": {"budget": budget.max_calls if budget.max_calls is not None else -1,
                          "llm_calls_needed": estimate["llm_calls_needed"],
                          "examples_done": len(keep),
                          "examples": total}}
    return records, payload
