"""Embeddings cached per checkpoint, so re-mining with the same checkpoint embeds nothing.

`<cache root>/_embeddings/<key digest>/` holds Parquet parts of (id, digest, vector) and
`key.json`; the key is (checkpoint root, checkpoint id, its preprocessing spec digest, dim).
A row is reused only when both the item id and the digest of its encoder input (tokens,
pixels, features) match, so a re-ingested corpus with other pixels never reads a stale
vector. Parts are written atomically, each named by a hash of its keys, as their chunk
finishes: a killed run keeps what it embedded and concurrent runs never overwrite each
other. Works on local folders and gs:// through schemas.storage.

Besides `embed` (items in memory), the cache serves runs whose items never reach one
process: `cached_keys` is the sorted key array a worker checks its items against,
`write_part` is what an embedding worker calls per batch, and `fill` copies the vectors of
wanted keys into an array (a memory-mapped file) one part at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
from loom.schemas import storage
from loom.schemas.keys import hash_keys
from loom.schemas.manifest import canonical_json
from loom.schemas.records import embedding_cache_schema

CACHE_DIR = "_embeddings"
PART_ROWS = 16_384  # items embedded and written per part


def item_digest(item: dict) -> str:
    """What the encoder reads of an ITEM: same digest, same embedding for a checkpoint."""
    h = hashlib.sha256()
    h.update(f"{item.get('modality')}\0{item.get('pixel_format')}\0{item.get('frames')}\0"
             f"{item.get('feature_bins')}\0{item.get('instruction_tokens') or 0}\0".encode())
    h.update(np.asarray(item.get("tokens") or [], dtype=np.int32).tobytes() + b"\0")
    h.update((item.get("pixels") or b"") + b"\0")
    feats = item.get("features")
    h.update(np.asarray(feats if feats is not None else [], dtype=np.float16).tobytes())
    return h.hexdigest()[:32]


def cache_keys(ids: Sequence[str], digests: Sequence[str]) -> np.ndarray:
    """One fixed-width key per (id, digest), sortable and searchable with numpy."""
    return hash_keys((f"{i}\0{d}" for i, d in zip(ids, digests, strict=True)), 16)


class EmbeddingCache:
    def __init__(self, root: str, key: dict, dim: int):
        self.key, self.dim = key | {"dim": dim}, dim
        digest = hashlib.sha256(canonical_json(self.key).encode()).hexdigest()[:16]
        self.dir = storage.join(storage.absolute(root), CACHE_DIR, digest)
        self.schema = embedding_cache_schema(dim)

    def _part_vectors(self, uri: str) -> tuple[list[str], list[str], np.ndarray]:
        table = storage.read_parquet([uri])
        vec = table.column("vector").combine_chunks()
        values = vec.flatten().to_numpy(zero_copy_only=False) if len(vec) else np.zeros(0)
        return (table.column("id").to_pylist(), table.column("digest").to_pylist(),
                np.asarray(values, dtype=np.float32).reshape(-1, self.dim))

    def parts(self) -> list[str]:
        return [f.uri for f in storage.list_files(self.dir, ".parquet")]

    def ensure_key(self) -> None:
        if not storage.exists(storage.join(self.dir, "key.json")):
            storage.write_atomic(storage.join(self.dir, "key.json"),
                                 json.dumps(self.key, indent=2, sort_keys=True).encode())

    def cached_keys(self) -> np.ndarray:
        """Sorted keys (`cache_keys`) of every cached row, read one part at a time."""
        keys = [cache_keys(t.column("id").to_pylist(), t.column("digest").to_pylist())
                for t in (storage.read_parquet([u], columns=["id", "digest"])
                          for u in self.parts())]
        return np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype="S16")

    def write_part(self, ids: Sequence[str], digests: Sequence[str], vecs: np.ndarray) -> None:
        """One atomic part named by a hash of its keys: a retry or a concurrent run writing
        the same rows writes the same name."""
        name = hashlib.sha256("\n".join(f"{a}\0{b}" for a, b in zip(ids, digests, strict=True))
                              .encode())
        table = pa.table({"id": list(ids), "digest": list(digests),
                          "vector": pa.FixedSizeListArray.from_arrays(
                              pa.array(np.asarray(vecs, dtype=np.float32).reshape(-1)),
                              self.dim)}, schema=self.schema)
        storage.write_parquet(table, storage.join(self.dir,
                                                  f"part-{name.hexdigest()[:16]}.parquet"))

    def fill(self, keys: np.ndarray, out: np.ndarray) -> int:
        """out[i] = the cached vector of keys[i] (unique, sorted `cache_keys`), from the
        first part that holds it; returns how many keys were found."""
        found = np.zeros(len(keys), dtype=bool)
        for uri in self.parts():
            if not len(keys) or found.all():
                break
            ids, dig, vecs = self._part_vectors(uri)
            part_keys = cache_keys(ids, dig)
            pos = np.minimum(np.searchsorted(keys, part_keys), len(keys) - 1)
            rows = np.flatnonzero((keys[pos] == part_keys) & ~found[pos])
            rows = rows[np.unique(pos[rows], return_index=True)[1]]  # a key twice in one part
            out[pos[rows]] = vecs[rows]
            found[pos[rows]] = True
        return int(found.sum())

    def embed(self, items: Sequence[dict], embed_fn: Callable[[list[dict]], np.ndarray],
              digests: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, int]]:
        """Vectors of `items` in order; only (id, digest) pairs not cached go to `embed_fn`.

        Cached parts are read one at a time into the output: memory stays at the output's
        size plus one part.
        """
        digests = digests if digests is not None else [item_digest(it) for it in items]
        want: dict[tuple[str, str], list[int]] = {}
        for i, k in enumerate(zip((it["id"] for it in items), digests, strict=True)):
            want.setdefault(k, []).append(i)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        found: set[tuple[str, str]] = set()
        for f in storage.list_files(self.dir, ".parquet"):
            ids, dig, vecs = self._part_vectors(f.uri)
            for r, k in enumerate(zip(ids, dig, strict=True)):
                if k in want and k not in found:
                    out[want[k]] = vecs[r]
                    found.add(k)
        todo = [(k, pos) for k, pos in want.items() if k not in found]
        if todo:
            self.ensure_key()
        for start in range(0, len(todo), PART_ROWS):
            chunk = todo[start : start + PART_ROWS]
            vecs = np.asarray(embed_fn([items[pos[0]] for _, pos in chunk]), dtype=np.float32)
            if vecs.shape != (len(chunk), self.dim):
                raise RuntimeError(f"embedder returned {vecs.shape} for {len(chunk)} items")
            for (_, pos), v in zip(chunk, vecs, strict=True):
                out[pos] = v
            self.write_part([a for (a, _), _ in chunk], [b for (_, b), _ in chunk], vecs)
        return out, {"embedded": len(todo), "cache_hits": sum(len(want[k]) for k in found)}
