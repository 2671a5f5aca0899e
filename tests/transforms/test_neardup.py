"""Near-duplicate signatures and groups (transforms/neardup.py)."""

from __future__ import annotations

import io

import numpy as np
from loom.schemas.spec import PreprocessingSpec
from loom.transforms import neardup
from loom.transforms.image import decode_image
from loom.transforms.neardup import (
    _PRIME,
    MAX_HAMMING,
    _mod_prime,
    _perms,
    minhash,
    near_dup_groups,
    phash,
    signature,
)
from loom.transforms.pixels import part_frames
from PIL import Image, ImageDraw

SPEC = PreprocessingSpec(image_size=64)


def _scene(seed: int) -> Image.Image:
    r = np.random.default_rng(seed)
    img = Image.fromarray((r.random((15, 20, 3)) * 255).astype(np.uint8)).resize(
        (320, 240), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, s = (int(v) for v in r.integers(0, 240, 3))
        draw.ellipse([x, y, x + s // 3, y + s // 3], fill=tuple(int(v) for v in r.integers(0, 255, 3)))
    return img


def _sig(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    part = decode_image(buf.getvalue(), SPEC)
    return signature("image", [part], part_frames)


def _bits(a: bytes, b: bytes) -> int:
    return bin(int.from_bytes(a[1:], "big") ^ int.from_bytes(b[1:], "big")).count("1")


def test_phash_survives_resize_and_recompression_not_other_images():
    same, other = [], []
    for seed in range(12):
        img = _scene(seed)
        base = _sig(img)
        same += [_bits(base, _sig(img, "JPEG", quality=40)),
                 _bits(base, _sig(img.resize((160, 120)), "JPEG", quality=75)),
                 _bits(base, _sig(img.resize((640, 480)), "WEBP", quality=50))]
        other.append(_bits(base, _sig(_scene(seed + 100))))
    assert max(same) <= MAX_HAMMING < min(other)


def test_phash_is_deterministic():
    rgb = np.asarray(_scene(3))
    assert phash(rgb) == phash(rgb.copy())


def test_minhash_near_copy_and_unrelated():
    text = "The quick brown fox jumps over the lazy dog near the riverbank at dawn. " * 3
    a, b = minhash(text), minhash(text.replace("lazy", "sleepy").upper())
    c = minhash("Quarterly revenue tables for the northern region, by month and by product.")
    assert float(np.mean(a == b)) >= 0.8 and float(np.mean(a == c)) < 0.1
    assert minhash("abc") is None


def _minhash_reference(text: str) -> np.ndarray | None:
    """minhash as first written (np.unique, then numpy's %): signatures are compared
    across runs, so every faster form must give these values."""
    norm = " ".join(text.lower().split())
    cps = np.frombuffer(norm.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    if len(cps) < 5:
        return None
    h = np.zeros(len(cps) - 5 + 1, dtype=np.uint64)
    for k in range(5):
        h = h * np.uint64(1_000_003) + cps[k:len(cps) - 5 + 1 + k]
    x = np.unique((h ^ (h >> np.uint64(29))) % np.uint64(_PRIME))
    a, b = _perms()
    return ((a[:, None] * x[None, :] + b[:, None]) % np.uint64(_PRIME)).min(axis=1).astype(np.uint32)


def test_minhash_values_are_the_reference_ones():
    rng = np.random.default_rng(7)
    words = ["the", "cat", "sat", "Grüße", "日本語", "😀", "mat", "\u0301", "x" * 30]
    texts = ["", "abcd", "abcde", "  a b  c d e ", "😀😀😀😀😀😀", "\U0010fffd" * 9,
             "ab\ncd\tef  gh", "word " * 3000]
    texts += [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 900, 60)]
    for text in texts:
        got, want = minhash(text), _minhash_reference(text)
        assert (got is None) == (want is None), text[:40]
        if want is not None:
            assert got.dtype == np.uint32 and np.array_equal(got, want), text[:40]


def test_mod_prime_is_the_remainder():
    rng = np.random.default_rng(3)
    top = np.iinfo(np.uint64).max
    edge = [0, 1, _PRIME - 1, _PRIME, _PRIME + 1, 2 * _PRIME - 1, 2 * _PRIME, 1 << 31,
            (1 << 62) + (1 << 31), 1 << 63, top, top - 1, top - _PRIME]
    v = np.concatenate([np.array(edge, dtype=np.uint64),
                        rng.integers(0, top, 200_000, dtype=np.uint64, endpoint=True),
                        rng.integers(0, 1 << 34, 200_000, dtype=np.uint64)])
    want = v % np.uint64(_PRIME)
    assert np.array_equal(_mod_prime(v.copy(), np.empty_like(v)), want)


def test_groups_join_near_copies_and_name_them_by_smallest_id():
    lake, other = _scene(1), _scene(2)
    text = ("A wooden boat rests on the shore of a quiet lake while two herons stand in the "
            "shallow water near the reeds at sunrise, and mist lifts slowly off the hills.")
    rows = [
        ("e", _sig(lake)), ("b", _sig(lake.resize((160, 120)), "JPEG", quality=70)),
        ("c", _sig(other)), ("d", None),
        ("f", signature("text", [{"text": text}], None)),
        ("a", signature("text", [{"text": text.replace("two", "three")}], None)),
        ("g", signature("text", [{"text": "Completely unrelated words about tax forms."}], None)),
    ]
    groups = near_dup_groups(rows)
    assert groups == {"e": "b", "b": "b", "c": "c", "d": "d", "f": "a", "a": "a", "g": "g"}


def test_chains_are_one_group():
    base = 0x0F0F_0F0F_0F0F_0F0F
    step = [base, base ^ 0b111111, base ^ 0b111111_111111]  # a~b, b~c, a and c 12 bits apart
    rows = [(k, b"I" + h.to_bytes(8, "big")) for k, h in zip("xyz", step, strict=True)]
    assert set(near_dup_groups(rows).values()) == {"x"}


def test_video_signature_needs_every_frame_close():
    frames = np.stack([np.asarray(_scene(s).resize((64, 64))) for s in range(4)])
    part = {"pixels": b"x"}
    sig = signature("video", [part], lambda p: frames)
    changed = frames.copy()
    changed[3] = np.asarray(_scene(99).resize((64, 64)))
    sig2 = signature("video", [part], lambda p: changed)
    assert len(sig) == 1 + 8 * 4
    assert near_dup_groups([("a", sig), ("b", sig)]) == {"a": "a", "b": "a"}
    assert near_dup_groups([("a", sig), ("b", sig2)]) == {"a": "a", "b": "b"}


def _image_rows(hashes: dict[str, int]) -> list[tuple[str, bytes]]:
    return [(k, b"I" + h.to_bytes(8, "big")) for k, h in hashes.items()]


def test_a_bucket_over_the_cap_joins_through_centres(monkeypatch):
    """Three tight clusters of pHashes in one bucket (same low band), over a cap of 8:
    each cluster is one group, as every pair would give, and clusters stay apart."""
    monkeypatch.setattr(neardup, "ALL_PAIRS_MAX", 8)
    bases = [0x0000_0000_0000_0155, 0xFFFF_0000_FFFF_0155, 0x00FF_FF00_F0F0_F155]
    hashes = {}
    for c, base in enumerate(bases):
        for k in range(10):  # 0-2 high bits flipped per member: within MAX_HAMMING of all
            flip = (1 << (40 + k % 3)) if k % 2 else (1 << (50 + k % 4)) | (1 << 30)
            hashes[f"{c}-{k:02d}"] = base ^ (flip if k else 0)
    groups = near_dup_groups(_image_rows(hashes))
    assert groups == {k: f"{k[0]}-00" for k in hashes}


def test_a_bucket_over_the_cap_costs_at_most_the_centres(monkeypatch):
    """200 mutually distant pHashes sharing one band: with the cap, each member is
    checked against 5 centres (5 passes over the bucket), not against all 199 others,
    and none joins."""
    monkeypatch.setattr(neardup, "ALL_PAIRS_MAX", 8)
    monkeypatch.setattr(neardup, "MAX_CENTRES", 5)
    rng = np.random.default_rng(0)
    hashes = {}
    while len(hashes) < 200:
        h = (int(rng.integers(0, 2**53)) << 10) | 0x155  # same bits 0-9: one bucket
        if all(bin(h ^ o).count("1") > MAX_HAMMING for o in hashes.values()):
            hashes[f"x{len(hashes):03d}"] = h
    passes = []
    real = neardup._close_to

    def counted(kind, members, sigs):
        fn = real(kind, members, sigs)
        return lambda i: (passes.append(len(members)), fn(i))[1]

    monkeypatch.setattr(neardup, "_close_to", counted)
    groups = near_dup_groups(_image_rows(hashes))
    assert groups == {k: k for k in hashes}
    assert 200 in passes and passes.count(200) == 5


def test_texts_over_the_cap_group_as_every_pair_would(monkeypatch):
    base = ("The committee approved the annual budget after a long debate about road repairs, "
            "school funding and the new library that the town has wanted for years.")
    other = ("Heavy rain flooded the lower fields overnight, so the harvest was delayed by a "
             "week and the farmers moved their machines to higher ground before dawn.")
    words = ["long", "annual", "new", "lower", "heavy", "higher"]
    rows = []
    for name, text in (("a", base), ("b", other)):
        for k, w in enumerate(words):
            rows.append((f"{name}{k}", signature("text", [{"text": text.replace(w, w.upper() + "s")}],
                                                 None)))
        rows.append((f"{name}9", signature("text", [{"text": text}], None)))
    every_pair = near_dup_groups(rows)
    monkeypatch.setattr(neardup, "ALL_PAIRS_MAX", 2)
    assert near_dup_groups(rows) == every_pair
    assert {g for k, g in every_pair.items() if k.startswith("a")} == {"a0"}
    assert {g for k, g in every_pair.items() if k.startswith("b")} == {"b0"}


def test_a_chain_over_the_cap_joins_through_a_later_centre(monkeypatch):
    """x~y and y~z, x and z 12 bits apart: x is the first centre (joins y), z the second,
    checked against the whole bucket, y included: one group, as every pair gives."""
    monkeypatch.setattr(neardup, "ALL_PAIRS_MAX", 2)
    base = 0x0F0F_0F0F_0F0F_0F0F
    step = [base, base ^ (0b111111 << 20), base ^ (0b111111_111111 << 20)]
    rows = _image_rows(dict(zip("xyz", step, strict=True)))
    assert near_dup_groups(rows) == {"x": "x", "y": "x", "z": "x"}
