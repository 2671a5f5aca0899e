"""A content-addressed cache of LLM responses: <root>/<key[:2]>/<key>.json.

The key covers everything that decides an answer (backend, model, prompt version,
generation config, seed, input), so a re-run over the same examples makes no calls.
Works on local folders and gs:// through schemas.storage. On gs:// every entry is a
request, so `get_many` fetches a batch's entries on a few threads: a run that is all
cache hits would otherwise wait one round trip per call, in a row.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loom.schemas import storage

GET_THREADS = 16  # entries fetched at once from a remote cache


def key(model: str, prompt_version: str, generation_config: dict, seed: int,
        input_hash: str, backend: str = "") -> str:
    blob = json.dumps([backend, model, prompt_version, generation_config, seed, input_hash],
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    def __init__(self, root_uri: str):
        self.root_uri = root_uri
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def uri(self, k: str) -> str:
        return storage.join(self.root_uri, k[:2], f"{k}.json")

    def get(self, k: str) -> dict[str, Any] | None:
        uri = self.uri(k)
        value = None
        try:
            value = json.loads(storage.read_bytes(uri))
        except FileNotFoundError:
            value = None
        except (OSError, ValueError):
            value = None  # a torn or unreadable entry is a miss; the put rewrites it
        with self._lock:
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
        return value

    def get_many(self, keys: list[str]) -> list[dict[str, Any] | None]:
        """`get` of every key, in order; from a remote cache several at a time (a local
        read costs less than a thread hop)."""
        if len(keys) < 2 or not storage.is_remote(self.root_uri):
            return [self.get(k) for k in keys]
        with ThreadPoolExecutor(min(GET_THREADS, len(keys)),
                                thread_name_prefix="loom-cache") as pool:
            return list(pool.map(self.get, keys))

    def put(self, k: str, value: dict[str, Any]) -> None:
        storage.write_atomic(self.uri(k), json.dumps(value, sort_keys=True).encode())

    def __getstate__(self) -> dict:
        return {"root_uri": self.root_uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root_uri"])
