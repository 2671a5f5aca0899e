"""Near-duplicate signatures and groups: resized or re-encoded copies of one asset are
not byte-identical (exact dedup misses them) but must never straddle the train/held-out
split, so ingest records a group per Example (`near_dup_group`) that splits follow.

Signatures (numpy only, deterministic across processes):
  image  a 64-bit DCT perceptual hash (pHash) of the decoded, resized pixels;
  video  the pHashes of up to 4 evenly spaced sampled frames;
  text   a 64-value MinHash over character 5-grams of the cleaned text.
Audio, pages and interleaved records have none (each is its own group).

Grouping: locality-sensitive buckets (pHash bands, MinHash bands) propose pairs, each
pair is verified (Hamming distance / estimated Jaccard), and verified pairs are joined
with union-find. A group is named by its smallest Example id.

A bucket of up to ALL_PAIRS_MAX members checks every pair. A larger one (templated
pages, boilerplate, one photo shot a thousand times: a bucket grows with the corpus)
checks each member against at most MAX_CENTRES centres instead (`_by_centres`), so its
cost grows with its size, not the square of it; two members close to each other but to
no common centre may then stay apart in that bucket.
"""

from __future__ import annotations

import functools
import struct
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
from PIL import Image

HASH_BITS = 64
MAX_HAMMING = 6  # of 64 bits: re-encoded or resized copies sit well within it
VIDEO_FRAMES = 4
SHINGLE = 5
MINHASH_PERMS = 64
MINHASH_BANDS = 16  # 16 bands x 4 rows: pairs above ~0.5 Jaccard become candidates
MIN_JACCARD = 0.8
ALL_PAIRS_MAX = 1024  # bucket members: up to this many, every pair is checked
MAX_CENTRES = 32  # a larger bucket: each member is checked against at most this many
_PRIME = (1 << 31) - 1
_KINDS = {b"I": "image", b"V": "video", b"T": "text"}


@functools.cache
def _dct_matrix(n: int = 32) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def phash(rgb: np.ndarray | Image.Image) -> int:
    """64-bit pHash: grey 32x32, 2-D DCT, the 8x8 lowest frequencies against their median.
    An RGB Pillow image gives the same hash as its pixels, without the copy."""
    if not isinstance(rgb, Image.Image):
        rgb = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    small = rgb.convert("L").resize((32, 32), Image.Resampling.BILINEAR)
    a = np.frombuffer(small.tobytes(), np.uint8).reshape(32, 32).astype(np.float64)
    d = _dct_matrix()
    low = (d @ a @ d.T)[:8, :8].reshape(-1)
    bits = low > np.sort(low[1:])[31]  # the median of 63 values (np.median costs 5x more)
    return int(np.packbits(bits).view(">u8")[0])


@functools.cache
def _perms() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20260418)  # fixed: signatures compare across runs
    return (rng.integers(1, _PRIME, MINHASH_PERMS, dtype=np.uint64),
            rng.integers(0, _PRIME, MINHASH_PERMS, dtype=np.uint64))


# uint64 constants as numpy scalars (a Python int operand costs a conversion per call)
_P64, _MUL64, _S29, _S31 = (np.uint64(v) for v in (_PRIME, 1_000_003, 29, 31))
_UNIQUE_OVER = 256  # shingles; fewer: the 64-row product costs less than sorting them out


def _mod_prime(v: np.ndarray, tmp: np.ndarray) -> np.ndarray:
    """`v % _PRIME` in place (`tmp`: scratch of v's shape), by folding: 2^31 = 1 modulo
    2^31 - 1. Two folds take any uint64 below _PRIME + 8, the last step below _PRIME
    (`v - _PRIME` wraps above v when v < _PRIME). numpy's `%` divides: ~3x the cost."""
    np.right_shift(v, _S31, out=tmp)
    v &= _P64
    v += tmp
    np.right_shift(v, _S31, out=tmp)
    v &= _P64
    v += tmp
    np.subtract(v, _P64, out=tmp)
    return np.minimum(v, tmp, out=v)


def minhash(text: str) -> np.ndarray | None:
    """MinHash (uint32, MINHASH_PERMS) of the text's character 5-grams, lower-cased with
    whitespace collapsed; None for text shorter than one shingle.

    Each value is min over shingles x of (a * x + b) % _PRIME: repeated shingles do
    not change a minimum, so a short text's are not sorted out first."""
    norm = " ".join(text.lower().split())
    cps = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(cps) - SHINGLE + 1
    if m < 1:
        return None
    h = cps[:m].copy()  # polynomial hash of each 5-gram, wrapping at 2^64
    for k in range(1, SHINGLE):
        h *= _MUL64
        h += cps[k:m + k]
    x = h >> _S29
    x ^= h
    x %= _P64  # one call: the fold's eight cost more on a row this short
    if m > _UNIQUE_OVER:
        x = np.unique(x)
    a, b = _perms()
    v = np.multiply.outer(a, x)  # a, x < 2^31: no product wraps
    v += b[:, None]
    return _mod_prime(v, np.empty_like(v)).min(axis=1).astype(np.uint32)


def image_signature(first: np.ndarray | Image.Image) -> bytes:
    """An image's signature from its first frame ((H, W, 3) pixels or the RGB Pillow
    image): ingest passes what it has just decoded, so the stored JPEG is not decoded
    again to hash it."""
    return b"I" + struct.pack(">Q", phash(first))


def signature(modality: str, parts: list[dict], frames_of) -> bytes | None:
    """The Example's near-dup signature (a kind byte, then the payload), or None.

    `frames_of(part)` gives a visual part's uint8 (F, H, W, 3) frames.
    """
    if modality == "image" and parts and parts[0].get("pixels"):
        return image_signature(frames_of(parts[0])[0])
    if modality == "video" and parts and parts[0].get("pixels"):
        frames = frames_of(parts[0])
        picks = np.unique(np.linspace(0, len(frames) - 1, min(VIDEO_FRAMES, len(frames)))
                          .round().astype(int))
        return b"V" + b"".join(struct.pack(">Q", phash(frames[i])) for i in picks)
    if modality == "text" and parts and parts[0].get("text"):
        sig = minhash(parts[0]["text"])
        return None if sig is None else b"T" + sig.astype(">u4").tobytes()
    return None


def _hashes(payload: bytes) -> list[int]:
    return [struct.unpack(">Q", payload[i:i + 8])[0] for i in range(0, len(payload), 8)]


def _close(kind: str, a: bytes, b: bytes) -> bool:
    if kind == "text":
        x, y = np.frombuffer(a, ">u4"), np.frombuffer(b, ">u4")
        return len(x) == len(y) and float(np.mean(x == y)) >= MIN_JACCARD
    ha, hb = _hashes(a), _hashes(b)  # video: every sampled frame close, same count
    return len(ha) == len(hb) and all(bin(p ^ q).count("1") <= MAX_HAMMING
                                      for p, q in zip(ha, hb, strict=True))


def _buckets(kind: str, payload: bytes) -> list[tuple]:
    if kind == "text":
        rows = len(payload) // 4 // MINHASH_BANDS * 4
        return [(kind, i, payload[i * rows:(i + 1) * rows]) for i in range(MINHASH_BANDS)]
    # pHash: MAX_HAMMING + 1 bands of the first frame's bits; two hashes within
    # MAX_HAMMING bits agree on at least one band (pigeonhole)
    first = _hashes(payload)[0]
    n = MAX_HAMMING + 1
    edges = [round(i * HASH_BITS / n) for i in range(n + 1)]
    return [(kind, i, (first >> lo) & ((1 << (hi - lo)) - 1))
            for i, (lo, hi) in enumerate(zip(edges, edges[1:], strict=False))]


def parse(sig: bytes | None) -> tuple[str, bytes] | None:
    """(kind, payload) of a stored signature; None when there is none (own group)."""
    if sig and sig[:1] in _KINDS:
        return _KINDS[sig[:1]], sig[1:]
    return None


def bucket_keys(kind: str, payload: bytes) -> list[bytes]:
    """The locality-sensitive buckets a signature falls in, each as bytes: two
    signatures can only be joined if they share one."""
    out = []
    for k, i, v in _buckets(kind, payload):
        out.append(k[:1].encode() + bytes([i]) + (v if isinstance(v, bytes) else v.to_bytes(8, "big")))
    return out


def bucket_pairs(kind: str, members: list[str], sigs: dict[str, tuple[str, bytes]]
                 ) -> Iterable[tuple[str, str]]:
    """The verified near-duplicate pairs among one bucket's members: every pair up to
    ALL_PAIRS_MAX members; above that, each member against at most MAX_CENTRES centres
    (`_by_centres`)."""
    if len(members) > ALL_PAIRS_MAX:
        close_to = _close_to(kind, members, sigs)
        yield from ((members[i], members[j]) for i, j in _by_centres(len(members), close_to))
        return
    if kind in ("image", "text"):  # every pair of the bucket at once, in numpy
        yield from (_close_images if kind == "image" else _close_texts)(members, sigs)
        return
    for i, a in enumerate(members):
        for b in members[i + 1:]:
            if _close(sigs[a][0], sigs[a][1], sigs[b][1]):
                yield a, b


def _close_to(kind: str, members: list[str], sigs: dict[str, tuple[str, bytes]]):
    """`close_to(i)`: a bool per member, whether it is close to member i (as `_close`),
    one vectorised pass over the bucket for images and texts."""
    if kind == "image":
        h = np.array([struct.unpack(">Q", sigs[m][1][:8])[0] for m in members], dtype=np.uint64)
        return lambda i: np.bitwise_count(h ^ h[i]) <= MAX_HAMMING
    if kind == "text":
        lens = np.array([len(sigs[m][1]) for m in members])
        width = int(lens.max())
        v = np.zeros((len(members), width // 4), dtype=np.uint32)
        for r, m in enumerate(members):
            payload = np.frombuffer(sigs[m][1], ">u4")
            v[r, :len(payload)] = payload
        return lambda i: (lens == lens[i]) & ((v == v[i]).mean(axis=1) >= MIN_JACCARD)
    return lambda i: np.array([_close(kind, sigs[members[i]][1], sigs[m][1]) for m in members])


def _by_centres(n: int, close_to) -> Iterable[tuple[int, int]]:
    """(centre, member) pairs of a bucket too large to check every pair: the first
    member not yet close to a centre becomes the next centre and is checked against the
    whole bucket (so chains through centres join), at most MAX_CENTRES times: O(n) checks
    per centre. Members are in a fixed order (by id), so every engine picks the same."""
    left = np.arange(n)
    for _ in range(MAX_CENTRES):
        if not len(left):  # a last lone member may still be close to a covered one
            return
        centre = int(left[0])
        near = close_to(centre)
        near[centre] = False
        for j in np.flatnonzero(near):
            yield centre, int(j)
        rest = ~near[left]
        rest[0] = False
        left = left[rest]


class UnionFind:
    """Components named by their smallest member."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def joined(self) -> dict[str, str]:
        """{member: component} for every member of a component of two or more."""
        return {x: self.find(x) for x in self.parent}


def near_dup_groups(rows: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """{example id: group id} for (id, signature) rows; a group is named by its smallest
    member id, and an Example without a near-duplicate is its own group.

    The same joins as ingest's engine steps (`pipelines/neardup.py`), in one process."""
    sigs: dict[str, tuple[str, bytes]] = {}
    ids = []
    for ex_id, sig in rows:
        ids.append(ex_id)
        if (parsed := parse(sig)) is not None:
            sigs[ex_id] = parsed
    uf = UnionFind()
    buckets: dict[bytes, list[str]] = defaultdict(list)
    for ex_id in sorted(sigs):
        for key in bucket_keys(*sigs[ex_id]):
            buckets[key].append(ex_id)
    for members in buckets.values():
        if len(members) > 1:
            for a, b in bucket_pairs(sigs[members[0]][0], members, sigs):
                uf.union(a, b)
    joined = uf.joined()
    return {ex_id: joined.get(ex_id, ex_id) for ex_id in ids}


def _close_images(members: list[str], sigs: dict[str, tuple[str, bytes]],
                  chunk: int = 2048) -> Iterable[tuple[str, str]]:
    """The pairs of a pHash bucket within MAX_HAMMING bits, by XOR and popcount over
    the bucket in numpy: similar images (plain backgrounds, one template) fill a bucket,
    and pair by pair in Python that took ~25 s at 10,000 images."""
    if len(members) < 2:
        return
    h = np.array([struct.unpack(">Q", sigs[m][1][:8])[0] for m in members], dtype=np.uint64)
    for lo in range(0, len(h), chunk):
        dist = np.bitwise_count(h[lo:lo + chunk, None] ^ h[None, :])
        rows, cols = np.nonzero(dist <= MAX_HAMMING)
        keep = cols > rows + lo  # each unordered pair once, no self-pairs
        for i, j in zip(rows[keep] + lo, cols[keep], strict=True):
            yield members[i], members[j]


def _close_texts(members: list[str], sigs: dict[str, tuple[str, bytes]],
                 chunk: int = 256) -> Iterable[tuple[str, str]]:
    """The pairs of a MinHash bucket whose signatures agree on >= MIN_JACCARD of their
    values (as `_close`), the whole bucket at once."""
    if len(members) < 2:
        return
    by_len: dict[int, list[int]] = defaultdict(list)  # only equal lengths compare
    for i, m in enumerate(members):
        by_len[len(sigs[m][1])].append(i)
    for idx in by_len.values():
        if len(idx) < 2:
            continue
        v = np.stack([np.frombuffer(sigs[members[i]][1], ">u4") for i in idx])
        for lo in range(0, len(v), chunk):
            same = (v[lo:lo + chunk, None, :] == v[None, :, :]).mean(axis=2)
            rows, cols = np.nonzero(same >= MIN_JACCARD)
            keep = cols > rows + lo
            for i, j in zip(rows[keep] + lo, cols[keep], strict=True):
                yield members[idx[i]], members[idx[j]]
