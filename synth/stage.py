"""The synth stage: Examples in, (query, positive) Pairs out, written by an LLM.

Each example gets one call per query kind of its modality; every query of an answer is
one Pair. Answers are cached by (backend, model, prompt version, generation config,
seed, example id), so a re-run makes no calls. A failed call is a Rejected row.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

import pyarrow as pa
import pydantic
from google.genai import types
from PIL import Image

from schemas import storage
from schemas.records import EXAMPLE, PAIR, REJECTED, Modality, Reason, to_table
from schemas.splits import DEFAULT_HELDOUT_FRACTION, split_for
from synth import client as llm_client
from synth.cache import ResponseCache
from synth.cache import key as cache_key
from synth.prompts import PromptSet
from transforms.pixels import part_frames
from transforms.stage import BaseStage

STATS = pa.schema([pa.field("llm_calls", pa.int64()), pa.field("cache_hits", pa.int64())])
STAGE = "synth"


class SynthConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    kinds: dict[str, list[str]] = pydantic.Field(
        default_factory=lambda: {"image": ["caption", "keyword"], "text": ["keyword", "question"]})
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    llm: llm_client.LLMConfig = pydantic.Field(default_factory=llm_client.LLMConfig)
    cache_uri: str
    # overrides llm.base_url; the offline backend with neither starts a server in-process
    base_url: str | None = None
    max_workers: int = 8


class _Failure(Exception):
    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


def response_key(llm: llm_client.LLMConfig, prompt_version: str, example_id: str) -> str:
    """The cache key of one answer; the budget estimate uses the same key."""
    return cache_key(llm.model, prompt_version, llm.generation_config(), llm.seed, example_id,
                     llm.backend)


def pair_id(example_id: str, kind: str, prompt_version: str, index: int) -> str:
    return hashlib.sha256(f"{example_id}|{kind}|{prompt_version}|{index}".encode()).hexdigest()[:24]


def _image_bytes(example: dict) -> tuple[bytes, str]:
    """The original file bytes, else the decoded pixels re-encoded as PNG."""
    uris = example.get("source_uris") or []
    if uris:
        try:
            data = storage.read_bytes(uris[0])
            if data:
                mime = example.get("mime") or "image/png"
                return data, mime if mime.startswith("image/") else "image/png"
        except Exception:  # noqa: BLE001 - fall back to the decoded pixels
            pass
    part = next((p for p in example.get("parts") or [] if p.get("pixels")), None)
    if part is None or not part.get("height") or not part.get("width"):
        raise _Failure(Reason.UNREADABLE, "source unreadable and no decoded pixels to send")
    try:
        frames = part_frames(part)
    except (OSError, ValueError) as e:
        raise _Failure(Reason.UNREADABLE, f"decoded pixels unreadable: {e}") from None
    if not len(frames):
        raise _Failure(Reason.UNREADABLE, "decoded pixels shorter than height*width*3")
    buf = io.BytesIO()
    Image.fromarray(frames[0], "RGB").save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def _content_parts(example: dict) -> list[types.Part]:
    if example["modality"] == Modality.IMAGE.value:
        data, mime = _image_bytes(example)
        return [types.Part.from_bytes(data=data, mime_type=mime)]
    text = "\n".join(p["text"] for p in example.get("parts") or [] if p.get("text"))
    if not text.strip():
        raise _Failure(Reason.EMPTY, "example has no text to send")
    return [types.Part.from_text(text=text)]


class SynthStage(BaseStage):
    name: ClassVar[str] = STAGE
    input_schema: ClassVar[pa.Schema] = EXAMPLE
    output_schemas: ClassVar[dict[str, pa.Schema]] = {"pairs": PAIR, "rejected": REJECTED}

    def __init__(self, config: SynthConfig):
        self.config = config
        self.prompts = PromptSet.load(sorted({k for ks in config.kinds.values() for k in ks}))
        self.llm_calls = 0
        self.cache_hits = 0
        self._client = None
        self._server = None
        self._cache: ResponseCache | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable before and after setup
        return {"config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])

    def setup(self) -> None:
        if self._client is not None:
            return
        cfg = self.config
        base_url = cfg.base_url or cfg.llm.base_url
        if cfg.llm.backend == "offline" and not base_url:
            from synth.offline_server import start_server

            self._server, base_url = start_server(0)
        self._client = llm_client.make_client(cfg.llm, base_url=base_url)
        self._cache = ResponseCache(cfg.cache_uri)

    def teardown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._client = None

    def _answer(self, example_id: str, kind: str, parts_fn) -> tuple[dict[str, Any], bool]:
        """(answer, came_from_cache)."""
        cfg = self.config.llm
        version, text = self.prompts.prompts[kind]
        k = response_key(cfg, version, example_id)
        cached = self._cache.get(k)
        if cached is not None:
            return cached, True
        parts = parts_fn()
        with self._lock:
            self.llm_calls += 1
        answer = llm_client.generate_pair_json(self._client, cfg, text, parts)
        self._cache.put(k, answer)
        return answer, False

    def _one(self, example: dict, kind: str,
             parts_cache: dict) -> tuple[list[dict], list[dict], int, int]:
        """(pairs, rejected, llm calls, cache hits) for one example and one query kind."""
        cfg = self.config
        eid, modality = example["id"], example["modality"]
        uri = (example.get("source_uris") or [""])[0] or eid
        version = self.prompts.version(kind)

        def parts_fn() -> list[types.Part]:
            with self._lock:  # build the (possibly large) parts once per example
                if eid not in parts_cache:
                    try:
                        parts_cache[eid] = _content_parts(example)
                    except _Failure as exc:
                        parts_cache[eid] = exc
            got = parts_cache[eid]
            if isinstance(got, _Failure):
                raise got
            return got

        try:
            answer, hit = self._answer(eid, kind, parts_fn)
        except _Failure as exc:
            return [], [self._rejected(uri, exc.reason, str(exc), eid)], 0, 0
        except llm_client.LLMBlocked as exc:
            return [], [self._rejected(uri, Reason.LLM_BLOCKED, str(exc), eid)], 1, 0
        except llm_client.LLMBadResponse as exc:
            return [], [self._rejected(uri, Reason.LLM_BAD_RESPONSE, str(exc), eid)], 1, 0
        except Exception as exc:  # noqa: BLE001 - LLMError and anything else: a row, not a crash
            msg = (str(exc) if isinstance(exc, llm_client.LLMError)
                   else f"{type(exc).__name__}: {exc}")
            return [], [self._rejected(uri, Reason.LLM_ERROR, msg, eid)], 1, 0
        split = split_for(eid, cfg.heldout_fraction).value
        gen = json.dumps(cfg.llm.generation_config(), sort_keys=True)
        queries = list(dict.fromkeys(q.strip() for q in answer.get("queries", []) if q.strip()))
        pairs = [
            {"pair_id": pair_id(eid, kind, version, i), "task": answer.get("task"), "kind": kind,
             "query_text": q, "query_modality": Modality.TEXT.value, "positive_id": eid,
             "positive_modality": modality, "split": split, "prompt_version": version,
             "model": cfg.llm.model, "backend": cfg.llm.backend, "generation_config": gen,
             "seed": cfg.llm.seed}
            for i, q in enumerate(queries)
        ]
        return pairs, [], 0 if hit else 1, 1 if hit else 0

    @staticmethod
    def _rejected(uri: str, reason: Reason, message: str, record_id: str) -> dict:
        return {"uri": uri, "stage": STAGE, "reason": reason.value, "message": message[:2000],
                "record_id": record_id}

    def process_batch(self, batch: pa.RecordBatch) -> dict[str, pa.Table]:
        self.setup()
        tasks = [(ex, kind) for ex in batch.to_pylist()
                 for kind in self.config.kinds.get(ex["modality"], [])]
        parts_cache: dict[str, Any] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.config.max_workers)) as pool:
            results = list(pool.map(lambda t: self._one(t[0], t[1], parts_cache), tasks))
        pairs = [p for r in results for p in r[0]]
        rejected = [x for r in results for x in r[1]]
        calls, hits = sum(r[2] for r in results), sum(r[3] for r in results)
        with self._lock:
            self.cache_hits += hits
        return {"pairs": to_table(pairs, PAIR), "rejected": to_table(rejected, REJECTED),
                "stats": to_table([{"llm_calls": calls, "cache_hits": hits}], STATS)}
