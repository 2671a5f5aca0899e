"""The FRet relabel stage: per mined triple, the LLM picks the best positive among the
current positive and its mined candidates, and the hard negatives among the rest.

Calls go through synth.calls.CallLoop (synth's loop: cache, limits, retries, refusals,
counts). The candidates are sent in their own modality (synth.stage.content_parts). A
triple whose call fails keeps its mined labels and gets a Rejected row.
"""

from __future__ import annotations

import hashlib
import json
from typing import ClassVar

import pyarrow as pa
import pydantic
from google.genai import types
from loom.schemas import storage
from loom.schemas.records import (
    LLM_STAT_NAMES,
    REJECTED,
    RELABEL,
    TRIPLE,
    rows_of,
    stats_schema,
    to_table,
)
from loom.synth import client as llm_client
from loom.synth.budget import Estimate, examples_estimate
from loom.synth.cache import key as cache_key
from loom.synth.calls import Call, CallLoop, Unsendable, rejection
from loom.synth.limits import RateLimits
from loom.synth.prompts import PromptSet
from loom.synth.stage import content_parts
from loom.transforms.stage import BaseStage, Resources

STAGE = "relabel"
STAT_NAMES = (*LLM_STAT_NAMES, "relabelled", "positives_changed")
STATS = stats_schema(STAT_NAMES)


class RelabelOutput(pydantic.BaseModel):
    best: int
    hard_negatives: list[int]


class RelabelConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    llm: llm_client.LLMConfig = pydantic.Field(default_factory=llm_client.LLMConfig)
    cache_uri: str
    base_url: str | None = None  # overrides llm.base_url (the driver's offline server)
    limits: RateLimits = pydantic.Field(default_factory=RateLimits)
    negatives: int = pydantic.Field(3, ge=0)
    examples_uris: tuple[str, ...] = ()  # Parquet files holding every candidate Example


def candidates(triple: dict) -> list[str]:
    return [triple["positive_id"]] + [n["id"] for n in triple["negatives"]]


def relabel_key(llm: llm_client.LLMConfig, prompt_version: str, triple: dict) -> str:
    """The cache key of one triple's answer (the driver's budget check uses it too)."""
    digest = hashlib.sha256(json.dumps([triple["query_text"], candidates(triple)]).encode())
    return cache_key(llm.model, prompt_version, llm.generation_config(), llm.seed,
                     digest.hexdigest(), llm.backend)


def relabel_estimate(triple: dict, examples: dict[str, dict], prompt_text: str,
                     max_output_tokens: int, with_repair: bool = True) -> Estimate:
    """The worst case of one triple's call (and of its repair call if allowed)."""
    sent = [examples[c] for c in candidates(triple) if c in examples]
    return examples_estimate(sent, prompt_text, max_output_tokens, with_repair,
                             extra_text=triple["query_text"])


def _checker(n: int):
    def check(raw: dict, out: RelabelOutput) -> dict:
        if not 1 <= out.best <= n:
            raise llm_client.LLMBadResponse(f"best {out.best} is not a candidate number 1..{n}")
        negs = [i for i in dict.fromkeys(out.hard_negatives) if 1 <= i <= n and i != out.best]
        return {"best": out.best, "hard_negatives": negs}
    return check


def _parts(triple: dict, examples: dict[str, dict]) -> list[types.Part]:
    parts = [types.Part.from_text(text=f"Query: {triple['query_text']}")]
    for i, cid in enumerate(candidates(triple), 1):
        parts.append(types.Part.from_text(text=f"Candidate {i}:"))
        ex = examples.get(cid)
        try:
            parts += content_parts(ex) if ex else [types.Part.from_text(text="(missing)")]
        except Unsendable:
            parts.append(types.Part.from_text(text="(unreadable)"))
    return parts


class RelabelStage(BaseStage):
    name: ClassVar[str] = STAGE
    resources: ClassVar[Resources] = Resources(num_cpus=0.25)  # waits on the LLM
    input_schema: ClassVar[pa.Schema] = TRIPLE
    output_schemas: ClassVar[dict[str, pa.Schema]] = {
        "triples": TRIPLE, "relabels": RELABEL, "rejected": REJECTED}

    def __init__(self, config: RelabelConfig):
        self.config = config
        self.prompts = PromptSet.load([STAGE])
        self.calls = CallLoop(config.llm, config.cache_uri, config.limits, config.base_url)
        self.examples: dict[str, dict] = {}

    def __getstate__(self) -> dict:
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])

    def setup(self) -> None:
        self.calls.setup()
        if self.config.examples_uris and not self.examples:
            table = storage.read_parquet(list(self.config.examples_uris))
            self.examples = {e["id"]: e for e in rows_of(table)}  # features: float16

    def teardown(self) -> None:
        self.calls.teardown()

    def _call(self, triple: dict) -> Call:
        llm = self.config.llm
        version, text = self.prompts.version(STAGE), self.prompts.text(STAGE)
        est = relabel_estimate(triple, self.examples, text, llm.max_output_tokens, False)
        return Call(relabel_key(llm, version, triple), text,
                    lambda: _parts(triple, self.examples), RelabelOutput,
                    _checker(len(candidates(triple))), tokens=est.tokens)

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        self.setup()
        triples = rows_of(batch)  # inline query parts' features stay float16 arrays
        answers, llm_stats = self.calls.run([self._call(t) for t in triples])
        stats = dict.fromkeys(STAT_NAMES, 0) | llm_stats
        out_rows, relabels, rejected = [], [], []
        for t, ans in zip(triples, answers, strict=True):
            if (bad := rejection(ans)) is not None:
                rejected.append({"uri": t["pair_id"], "stage": STAGE, "reason": bad[0].value,
                                 "message": bad[1][:2000], "record_id": t["pair_id"]})
                out_rows.append(t)  # keeps its mined labels
                continue
            row, rel = self._relabelled(t, ans)
            out_rows.append(row)
            relabels.append(rel)
        stats["relabelled"] = len(relabels)
        stats["positives_changed"] = sum(r["changed"] for r in relabels)
        return {"triples": to_table(out_rows, TRIPLE), "relabels": to_table(relabels, RELABEL),
                "rejected": to_table(rejected, REJECTED), "stats": to_table([stats], STATS)}

    def _relabelled(self, t: dict, ans: dict) -> tuple[dict, dict]:
        """The triple with the LLM's positive and negatives, and its relabels row."""
        cands, examples = candidates(t), self.examples
        new_pos = cands[ans["best"] - 1]
        known = {n["id"]: n for n in t["negatives"]}
        negs = [cands[i - 1] for i in ans["hard_negatives"]
                if cands[i - 1] != new_pos][: self.config.negatives]
        row = dict(t) | {
            "positive_id": new_pos,
            "positive_modality": examples.get(new_pos, {}).get("modality", t["positive_modality"]),
            "positive_score": t["positive_score"] if new_pos == t["positive_id"] else None,
            "negatives": [{"id": c, "score": known.get(c, {}).get("score"),
                           "modality": examples.get(c, {}).get("modality"), "rank": r}
                          for r, c in enumerate(negs)],
        }
        usage = ans.get("usage") or {}
        rel = {"pair_id": t["pair_id"], "query_text": t["query_text"],
               "old_positive_id": t["positive_id"], "new_positive_id": new_pos,
               "changed": new_pos != t["positive_id"], "negatives": negs,
               "prompt_version": self.prompts.version(STAGE), "model": self.config.llm.model,
               "input_tokens": usage.get("input_tokens"),
               "output_tokens": usage.get("output_tokens")}
        return row, rel
