"""Synth: Examples -> Pairs (with their split) through the google-genai client.

The `offline` backend starts loom's local Gemini-compatible server for the run; the
response cache lives next to the output root, so a rerun or a changed prompt pays only
for what changed.
"""

from __future__ import annotations

import contextlib
from functools import partial

import pyarrow as pa

from pipelines.common import cleanup_work, result, reuse, timed
from pipelines.runner import Engine, StageTask, file_items, merge_results, run_stage
from schemas import manifest as mf
from schemas import storage
from schemas.manifest import write_part
from synth.cache import ResponseCache
from synth.client import LLMConfig, check_backend
from synth.offline_server import offline_server
from synth.prompts import PromptSet
from synth.stage import SynthConfig, SynthStage, response_key


class BudgetExceeded(Exception):
    """The run stopped at its call budget; what it paid for is cached, a rerun resumes."""

    def __init__(self, payload: dict):
        super().__init__(f"stopped by the LLM call budget: {payload['counts']}")
        self.payload = payload


def run_synth(examples_uri: str, output_root: str, llm: LLMConfig | None = None,
              engine: Engine = Engine.BEAM, heldout_fraction: float = 0.2,
              kinds: dict[str, list[str]] | None = None, rows_per_item: int = 64,
              max_calls: int | None = None, dry_run: bool = False) -> dict:
    """Pairs for every Example. `max_calls` is a budget the run never exceeds: past it,
    the run does what fits, commits nothing and raises BudgetExceeded (CLI exit 3); a
    rerun pays only for what is still missing. `dry_run` only counts the calls needed."""
    llm = llm or LLMConfig()
    check_backend(llm)
    examples_uri, output_root = storage.absolute(examples_uri), storage.absolute(output_root)
    ex_dir, ex_manifest = mf.resolve_input(examples_uri)
    base = SynthConfig(llm=llm, heldout_fraction=heldout_fraction,
                       cache_uri=storage.join(output_root, "_llm_cache"),
                       **({"kinds": kinds} if kinds else {}))
    prompt_set = PromptSet.load(sorted({k for ks in base.kinds.values() for k in ks}))
    config = {
        "kinds": base.kinds,
        "heldout_fraction": heldout_fraction,
        "llm": llm.model_dump(exclude={"base_url", "timeout_s"}),
        "prompts": prompt_set.digest(),
    }
    version = mf.version_id("synth", [ex_manifest.version], config)
    writer = mf.VersionWriter(output_root, "synth", version)
    if (done := reuse(writer, "synth", llm_calls=0)) is not None:
        return done
    timings: dict[str, float] = {}
    examples_files = ex_manifest.tables.get("examples", [])
    budget_payload = None
    if max_calls is not None or dry_run:
        pending = _pending_calls(ex_dir, ex_manifest, base, prompt_set)
        needed = sum(pending.values())
        if dry_run:
            return {"stage": "synth", "version": version, "dry_run": True, "reused": False,
                    "datasets": {}, "counts": {"examples": len(pending),
                                               "llm_calls_needed": needed}}
        if needed > max_calls:
            examples_files, budget_payload = _within_budget(
                ex_dir, ex_manifest, writer, pending, max_calls, version)
    server = offline_server() if llm.backend == "offline" and not llm.base_url else None
    with (server or contextlib.nullcontext(llm.base_url)) as base_url, timed(timings, "synth_s"):
        cfg = base.model_copy(update={"base_url": base_url})
        items = file_items(examples_files, ex_dir if budget_payload is None
                           else storage.join(writer.dir, "_work"), rows_per_item)
        tables, stats = merge_results(
            run_stage(engine, StageTask(partial(SynthStage, cfg), writer.dir), items))
    if budget_payload is not None:  # nothing is committed: the version stays invisible
        budget_payload["counts"]["llm_calls"] = stats.get("llm_calls", 0)
        raise BudgetExceeded(budget_payload)
    for t in ("pairs", "rejected"):
        tables.setdefault(t, [])
    pairs = storage.read_parquet([storage.join(writer.dir, f.path) for f in tables["pairs"]],
                                 columns=["split"]) if tables["pairs"] else None
    heldout = sum(1 for s in pairs.column("split").to_pylist() if s == "heldout") if pairs else 0
    counts = {
        "examples": ex_manifest.rows("examples"),
        "pairs": sum(f.rows for f in tables["pairs"]),
        "heldout_pairs": heldout,
        "rejected": sum(f.rows for f in tables["rejected"]),
        "llm_calls": stats.get("llm_calls", 0),
        "cache_hits": stats.get("cache_hits", 0),
    }
    lineage = {
        "previous": _previous(output_root, writer.version, ex_manifest.version),
        "examples": ex_dir,
        "examples_version": ex_manifest.version,
        "prompt_set": prompt_set.digest(),
        "prompt_versions": {k: v[0] for k, v in prompt_set.prompts.items()},
        "llm_model": llm.model,
        "backend": llm.backend,
        "spec_digest": ex_manifest.lineage.get("spec_digest"),
        "timings": timings,
    }
    manifest = writer.commit(tables, counts, config, lineage)
    cleanup_work(writer.dir)
    return result("synth", manifest, writer.dir, False, llm_calls=counts["llm_calls"],
                  timings=timings)


def _previous(root: str, version: str, examples_version: str) -> str | None:
    """The newest other synth version over the same examples: what this one regenerates."""
    found = mf.newest_version(root, lambda m: (
        m.stage == "synth" and m.version != version
        and m.lineage.get("examples_version") == examples_version))
    return found[0] if found else None


def _pending_calls(ex_dir: str, ex_manifest: mf.Manifest, base: SynthConfig,
                   prompt_set: PromptSet) -> dict[str, int]:
    """Example id -> calls it still needs (its kinds whose response is not cached)."""
    llm = base.llm
    cache = ResponseCache(base.cache_uri)
    table = mf.read_table(ex_dir, ex_manifest, "examples", columns=["id", "modality"])
    out = {}
    for eid, modality in zip(table.column("id").to_pylist(),
                             table.column("modality").to_pylist(), strict=True):
        out[eid] = sum(
            1 for kind in base.kinds.get(modality, [])
            if not storage.exists(cache.uri(response_key(llm, prompt_set.version(kind), eid))))
    return out


def _within_budget(ex_dir: str, ex_manifest: mf.Manifest, writer: mf.VersionWriter,
                   pending: dict[str, int], max_calls: int, version: str):
    """The examples whose missing calls fit the budget (in id order), as a work file."""
    keep, spent = set(), 0
    for eid in sorted(pending):
        if spent + pending[eid] <= max_calls:
            keep.add(eid)
            spent += pending[eid]
    table = mf.read_table(ex_dir, ex_manifest, "examples")
    mask = pa.array([i in keep for i in table.column("id").to_pylist()])
    record = write_part(storage.join(writer.dir, "_work"), "budget", "examples",
                        table.filter(mask))
    payload = {"stage": "synth", "version": version, "stopped": "budget", "reused": False,
               "datasets": {}, "counts": {"budget": max_calls,
                                          "llm_calls_needed": sum(pending.values()),
                                          "examples_done": len(keep),
                                          "examples": len(pending)}}
    return [record], payload
