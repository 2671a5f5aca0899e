"""FRet relabel: a `loom mine` version in, a relabelled triples version out.

The output has the same schema (so `loom shard` takes it) plus a `relabels` table naming,
per pair, the old and new positive and whether it changed. The stage
(synth.relabel.RelabelStage) runs on Beam or Ray and calls the LLM through synth's call
loop, so relabel has synth's cache, rate limits, retries, refusal handling, counts and
budget: every uncached triple's worst case is reserved before the run, what does not fit
waits for a rerun (BudgetExceeded, exit 3), and nothing is committed until all is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
from loom.pipelines.common import BadInput, cleanup_work, result, reuse, timed
from loom.pipelines.runner import Engine, StageTask, file_items, merge_results, run_stage
from loom.pipelines.synth import ENGINE_WORKERS
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.manifest import FileRecord, write_part
from loom.schemas.records import EXAMPLE, LLM_STAT_NAMES, rows_of
from loom.synth.budget import Budget, BudgetExceeded, Ledger, price_for, usage
from loom.synth.cache import ResponseCache
from loom.synth.client import LLMConfig, check_backend
from loom.synth.limits import RateLimits
from loom.synth.offline_server import offline_server
from loom.synth.prompts import PromptSet
from loom.synth.relabel import STAGE, RelabelConfig, RelabelStage, relabel_estimate, relabel_key

WORK = "_work"


def run_relabel(triples_uri: str, output_root: str, llm: LLMConfig | None = None,
                negatives: int = 3, limits: RateLimits | None = None,
                engine: Engine = Engine.BEAM, budget: Budget | None = None,
                max_calls: int | None = None, rows_per_item: int = 256,
                engine_opts: dict | None = None) -> dict:
    llm = llm or LLMConfig()
    check_backend(llm)
    budget = budget or Budget()
    if max_calls is not None:
        budget = budget.model_copy(update={"max_calls": max_calls})
    price = price_for(llm.model)
    ledger = Ledger(budget, price)  # refuses a cost budget without a price, before any work
    triples_uri, output_root = storage.absolute(triples_uri), storage.absolute(output_root)
    t_dir, t_manifest = mf.resolve_input(triples_uri)
    if "triples" not in t_manifest.tables:
        raise BadInput(f"{t_dir} is not a triples dataset (run loom mine first)")
    prompts = PromptSet.load([STAGE])
    config = {"llm": llm.model_dump(include={"backend", "model", "temperature", "seed",
                                             "max_output_tokens"}),
              "prompts": prompts.digest(), "negatives": negatives}
    version = mf.version_id(STAGE, [t_manifest.version], config)
    writer = mf.VersionWriter(output_root, STAGE, version)
    if (done := reuse(writer, STAGE, llm_calls=0, usage=usage({}, price))) is not None:
        return done
    triples = mf.read_table(t_dir, t_manifest, "triples")
    ex_uris = _candidate_examples(writer, triples, t_manifest)
    cache_uri = storage.join(output_root, "_llm_cache")
    files, payload = t_manifest.tables["triples"], None
    if budget.limited and (cut := _within_budget(writer, triples, ex_uris, ledger, llm,
                                                 prompts, cache_uri, budget)):
        files, payload = cut
    workers = int((engine_opts or {}).get("workers", (engine_opts or {}).get("actors", 0))
                  or ENGINE_WORKERS[Engine(engine)])
    cfg = RelabelConfig(llm=llm, cache_uri=cache_uri, negatives=negatives,
                        limits=(limits or RateLimits()).share(workers),
                        examples_uris=tuple(ex_uris))
    timings: dict[str, float] = {}
    server = offline_server() if llm.backend == "offline" and not llm.base_url else None
    with (server or contextlib.nullcontext(llm.base_url)) as base_url, timed(timings, "relabel_s"):
        task = StageTask(partial(RelabelStage, cfg.model_copy(update={"base_url": base_url})),
                         writer.dir)
        items = file_items(files, t_dir if payload is None else storage.join(writer.dir, WORK),
                           rows_per_item)
        tables, stats = merge_results(run_stage(engine, task, items, **(engine_opts or {})))
    spent = usage(stats, price)
    if budget.limited:
        ledger.settle_run(spent)
    if payload is not None:  # nothing is committed: the version stays invisible
        payload["counts"]["llm_calls"] = stats.get("llm_calls", 0)
        payload["usage"] = spent
        raise BudgetExceeded(payload)
    counts = {"triples": sum(f.rows for f in tables.get("triples", [])),
              "relabelled": int(stats.get("relabelled", 0)),
              "positives_changed": int(stats.get("positives_changed", 0)),
              "rejected": sum(f.rows for f in tables.get("rejected", []))}
    counts |= {k: int(stats.get(k, 0)) for k in LLM_STAT_NAMES}
    lineage = {"triples": t_dir, "triples_version": t_manifest.version,
               "examples": t_manifest.lineage["examples"],
               "pairs": t_manifest.lineage.get("pairs"),
               "prompt_versions": {STAGE: prompts.version(STAGE)},
               "llm_model": llm.model, "backend": llm.backend, "engine": Engine(engine).value,
               "timings": timings, "extra": {"usage": spent}}
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result(STAGE, manifest, writer.dir, False, llm_calls=counts["llm_calls"],
                  timings=timings, usage=spent)


def _candidate_examples(writer: mf.VersionWriter, triples: pa.Table,
                        t_manifest: mf.Manifest) -> list[str]:
    """Every Example a triple names, as work files the stage's workers read: one per
    Examples file that holds any, read file by file (ids first, then only those rows), so
    the corpus is never held whole."""
    ex_dir, ex_manifest = mf.resolve_input(t_manifest.lineage["examples"])
    negatives = pc.struct_field(pc.list_flatten(triples.column("negatives")), "id")
    needed = pa.chunked_array([*triples.column("positive_id").chunks, *negatives.chunks],
                              pa.string()).unique()
    work = storage.join(writer.dir, WORK, "candidates")
    uris = []
    for f in ex_manifest.tables.get("examples", []):
        one = dataclasses.replace(ex_manifest, tables={"examples": [f]})
        ids = mf.read_table(ex_dir, one, "examples", columns=["id"]).column("id")
        mask = pc.is_in(ids, value_set=needed)
        if pc.any(mask).as_py():
            rows = mf.read_table(ex_dir, one, "examples").filter(mask)
            record = write_part(work, "examples", f"part-{len(uris):05d}", rows)
            uris.append(storage.join(work, record.path))
    return uris


def _within_budget(writer: mf.VersionWriter, triples: pa.Table, ex_uris: list[str],
                   ledger: Ledger, llm: LLMConfig, prompts: PromptSet, cache_uri: str,
                   budget: Budget) -> tuple[list[FileRecord], dict] | None:
    """The uncached triples whose worst case fits (in pair_id order), reserved in `ledger`.
    None when all fit; otherwise a work file of those that fit and the payload
    BudgetExceeded will carry."""
    version, text = prompts.version(STAGE), prompts.text(STAGE)
    cache = ResponseCache(cache_uri)
    examples = {e["id"]: e for e in rows_of(storage.read_parquet(ex_uris, schema=EXAMPLE))}
    rows = triples.select(["pair_id", "query_text", "positive_id", "negatives"]).to_pylist()
    pending = {t["pair_id"]: relabel_estimate(t, examples, text, llm.max_output_tokens)
               for t in rows if not storage.exists(cache.uri(relabel_key(llm, version, t)))}
    keep = set(ledger.plan(pending))
    if len(keep) == len(pending):
        return None
    mask = pa.array([p in keep for p in triples.column("pair_id").to_pylist()])
    record = write_part(storage.join(writer.dir, WORK), "budget", "triples", triples.filter(mask))
    payload = {"stage": STAGE, "version": writer.version, "stopped": "budget", "reused": False,
               "datasets": {}, "budget": budget.model_dump(exclude_none=True),
               "counts": {"budget": budget.max_calls if budget.max_calls is not None else -1,
                          "llm_calls_needed": len(pending), "triples_done": len(keep),
                          "triples": triples.num_rows}}
    return [record], payload
