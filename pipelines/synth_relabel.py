"""FRet relabel: for each mined triple, the LLM picks the best positive among the current
positive and its mined candidates, and the hard negatives among the rest.

Input: a `loom mine` version (triples: query, positive, mined negatives). Output: a new
triples version (same schema, so `loom shard` takes it) plus a `relabels` table naming,
per pair, the old and new positive and whether it changed. The candidates are sent in
their own modality (synth.stage._content_parts). Answers are cached like synth's; calls
run async in the driver, many in flight under the same limits, retries and repair.
A triple whose call fails keeps its mined labels and gets a Rejected row.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import pydantic
from google.genai import types

from loom.pipelines.common import BadInput, result, reuse, timed
from loom.schemas import manifest as mf
from loom.schemas import storage
from loom.schemas.records import REJECTED, RELABEL, TRIPLE, Reason, to_table
from loom.synth import client as llm_client
from loom.synth.cache import ResponseCache
from loom.synth.cache import key as cache_key
from loom.synth.client import LLMConfig, check_backend
from loom.synth.limits import Limiter, RateLimits
from loom.synth.offline_server import offline_server
from loom.synth.prompts import PromptSet
from loom.synth.stage import _content_parts, _Failure

class RelabelOutput(pydantic.BaseModel):
    best: int
    hard_negatives: list[int]


def _checker(n: int):
    def check(raw: dict, out: RelabelOutput) -> dict:
        if not 1 <= out.best <= n:
            raise llm_client.LLMBadResponse(f"best {out.best} is not a candidate number 1..{n}")
        negs = [i for i in dict.fromkeys(out.hard_negatives) if 1 <= i <= n and i != out.best]
        return {"best": out.best, "hard_negatives": negs}
    return check


def run_relabel(triples_uri: str, output_root: str, llm: LLMConfig | None = None,
                negatives: int = 3, limits: RateLimits | None = None) -> dict:
    llm = llm or LLMConfig()
    check_backend(llm)
    limits = limits or RateLimits()
    triples_uri, output_root = storage.absolute(triples_uri), storage.absolute(output_root)
    t_dir, t_manifest = mf.resolve_input(triples_uri)
    if "triples" not in t_manifest.tables:
        raise BadInput(f"{t_dir} is not a triples dataset (run loom mine first)")
    prompts = PromptSet.load(["relabel"])
    config = {"llm": llm.model_dump(include={"backend", "model", "temperature", "seed",
                                             "max_output_tokens"}),
              "prompts": prompts.digest(), "negatives": negatives}
    version = mf.version_id("relabel", [t_manifest.version], config)
    writer = mf.VersionWriter(output_root, "relabel", version)
    if (done := reuse(writer, "relabel", llm_calls=0)) is not None:
        return done
    triples = mf.read_table(t_dir, t_manifest, "triples").to_pylist()
    ex_dir, ex_manifest = mf.resolve_input(t_manifest.lineage["examples"])
    needed = {t["positive_id"] for t in triples} | {n["id"] for t in triples
                                                   for n in t["negatives"]}
    examples = {e["id"]: e for e in mf.read_table(ex_dir, ex_manifest, "examples").to_pylist()
                if e["id"] in needed}
    timings: dict[str, float] = {}
    server = offline_server() if llm.backend == "offline" and not llm.base_url else None
    import contextlib

    with (server or contextlib.nullcontext(llm.base_url)) as base_url, timed(timings, "relabel_s"):
        client = llm_client.make_client(llm, base_url=base_url)
        cache = ResponseCache(storage.join(output_root, "_llm_cache"))
        answers, stats = asyncio.run(_ask_all(client, llm, prompts, cache, triples, examples,
                                              limits))
    out_rows, relabels, rejected = [], [], []
    version_id = prompts.version("relabel")
    for t in triples:
        cands = [t["positive_id"]] + [n["id"] for n in t["negatives"]]
        ans = answers[t["pair_id"]]
        if "rejected" in ans:
            rejected.append({"uri": t["pair_id"], "stage": "relabel", "reason": ans["rejected"],
                             "message": ans["message"][:2000], "record_id": t["pair_id"]})
            out_rows.append(t)
            continue
        new_pos = cands[ans["best"] - 1]
        known = {n["id"]: n for n in t["negatives"]}
        negs = [cands[i - 1] for i in ans["hard_negatives"] if cands[i - 1] != new_pos][:negatives]
        row = dict(t) | {
            "positive_id": new_pos,
            "positive_modality": examples.get(new_pos, {}).get("modality", t["positive_modality"]),
            "positive_score": t["positive_score"] if new_pos == t["positive_id"] else None,
            "negatives": [{"id": c, "score": known.get(c, {}).get("score"),
                           "modality": examples.get(c, {}).get("modality"), "rank": r}
                          for r, c in enumerate(negs)],
        }
        out_rows.append(row)
        usage = ans.get("usage") or {}
        relabels.append({"pair_id": t["pair_id"], "query_text": t["query_text"],
                         "old_positive_id": t["positive_id"], "new_positive_id": new_pos,
                         "changed": new_pos != t["positive_id"], "negatives": negs,
                         "prompt_version": version_id, "model": llm.model,
                         "input_tokens": usage.get("input_tokens"),
                         "output_tokens": usage.get("output_tokens")})
    tables = {"triples": [writer.write_part("triples", "part-00000", to_table(out_rows, TRIPLE))]}
    if relabels:
        tables["relabels"] = [writer.write_part("relabels", "part-00000",
                                                to_table(relabels, RELABEL))]
    if rejected:
        tables["rejected"] = [writer.write_part("rejected", "part-00000",
                                                to_table(rejected, REJECTED))]
    counts = {"triples": len(out_rows), "relabelled": len(relabels),
              "positives_changed": sum(r["changed"] for r in relabels),
              "rejected": len(rejected)} | stats
    lineage = {"triples": t_dir, "triples_version": t_manifest.version, "examples": ex_dir,
               "pairs": t_manifest.lineage.get("pairs"), "prompt_versions": {"relabel": version_id},
               "llm_model": llm.model, "backend": llm.backend, "timings": timings}
    manifest = writer.commit(tables, counts, config, lineage)
    return result("relabel", manifest, writer.dir, False, llm_calls=stats["llm_calls"],
                  timings=timings)


def _parts(triple: dict, examples: dict[str, dict]) -> list[types.Part]:
    parts = [types.Part.from_text(text=f"Query: {triple['query_text']}")]
    cands = [triple["positive_id"]] + [n["id"] for n in triple["negatives"]]
    for i, cid in enumerate(cands, 1):
        parts.append(types.Part.from_text(text=f"Candidate {i}:"))
        ex = examples.get(cid)
        try:
            parts += _content_parts(ex) if ex else [types.Part.from_text(text="(missing)")]
        except _Failure:
            parts.append(types.Part.from_text(text="(unreadable)"))
    return parts


async def _ask_all(client, llm: LLMConfig, prompts: PromptSet, cache: ResponseCache,
                   triples: list[dict], examples: dict[str, dict], limits: RateLimits):
    limiter = Limiter(limits)
    version, text = prompts.prompts["relabel"]
    stats = {"llm_calls": 0, "cache_hits": 0, "retries": 0, "input_tokens": 0, "output_tokens": 0}

    def on_retry(_exc) -> None:
        stats["retries"] += 1

    async def one(t: dict) -> tuple[str, dict]:
        cands = [t["positive_id"]] + [n["id"] for n in t["negatives"]]
        digest = hashlib.sha256(json.dumps([t["query_text"], cands]).encode()).hexdigest()
        k = cache_key(llm.model, version, llm.generation_config(), llm.seed, digest, llm.backend)
        if (hit := cache.get(k)) is not None:
            stats["cache_hits"] += 1
            return t["pair_id"], hit
        stats["llm_calls"] += 1
        try:
            ans = await llm_client.agenerate_structured(
                client, llm, text, _parts(t, examples), RelabelOutput, _checker(len(cands)),
                limiter.slot, on_retry)
        except llm_client.LLMBlocked as exc:
            ans = {"rejected": Reason.LLM_BLOCKED.value, "message": str(exc)}
        except llm_client.LLMBadResponse as exc:
            ans = {"rejected": Reason.LLM_BAD_RESPONSE.value, "message": str(exc)}
        except llm_client.LLMError as exc:
            return t["pair_id"], {"rejected": Reason.LLM_ERROR.value, "message": str(exc)}
        usage = ans.get("usage") or {}
        stats["input_tokens"] += int(usage.get("input_tokens", 0))
        stats["output_tokens"] += int(usage.get("output_tokens", 0))
        await asyncio.to_thread(cache.put, k, ans)
        return t["pair_id"], ans

    pairs = await asyncio.gather(*(one(t) for t in triples))
    await client.aio.aclose()
    return dict(pairs), stats
