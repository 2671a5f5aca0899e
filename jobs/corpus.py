"""Demo corpus generator: seeded, offline scene images and texts plus a few bad files.

Writes ``<out>/media/`` (what ingest reads: file names carry only a shuffled index)
and ``<out>/ground_truth.jsonl`` outside it (file -> scene key), so the encoder never
sees the labels. The multimodal world adds the rich scenes as videos (with and without
an audio track), audio clips, two-page PDFs and interleaved JSONL records (caption +
image + audio), each drawn from its own near-miss families.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from collections.abc import Iterator
from typing import Literal

from loom.schemas import storage
from loom.transforms.scenes import (
    RichScene,
    Scene,
    describe,
    describe_rich,
    random_rich_scene,
    random_scene,
    render_image,
    render_rich,
    variants,
)
from loom.transforms.scenes_media import render_audio, render_pdf, render_video

IMAGE_SIDE = 96
World = Literal["simple", "rich", "multimodal"]
WORLDS = ("simple", "rich", "multimodal")
AnyScene = Scene | RichScene


def _rich_families(rng: random.Random, kind: str) -> Iterator[tuple[RichScene, str]]:
    """Endless (scene, family id): a base scene, then 2-4 of its near misses."""
    for n in itertools.count():
        base = random_rich_scene(rng)
        near = variants(base, rng)
        family = f"{kind}-{n:05d}"
        for scene in [base] + rng.sample(near, k=min(len(near), rng.randint(2, 4))):
            yield scene, family


def _scenes(rng: random.Random, kind: str, world: World) -> Iterator[tuple[AnyScene, str | None]]:
    if world != "simple":
        yield from _rich_families(rng, kind)
    else:
        while True:
            yield random_scene(rng), None


def _render(scene: AnyScene, rng: random.Random) -> bytes:
    if isinstance(scene, RichScene):
        return render_rich(scene, rng, side=IMAGE_SIDE)
    return render_image(scene, rng, side=IMAGE_SIDE)


def _describe(scene: AnyScene, rng: random.Random) -> str:
    return describe_rich(scene, rng) if isinstance(scene, RichScene) else describe(scene, rng)


def generate_corpus(out_dir: str, n_images: int, n_texts: int, seed: int = 0,
                    bad_files: bool = True, world: World = "simple", media: int | None = None,
                    video_audio: float = 0.5) -> dict:
    """Writes the corpus; same seed -> byte-identical files. Returns file counts.

    world="rich" draws each modality's scenes in near-miss families (a base and a few
    one-attribute-off or swapped-attribute variants); ground truth names the family.
    world="multimodal" adds `media` videos, audio clips, PDF pages and records (default
    n_images // 2 of each); `video_audio` of the videos (0 to 1) have an audio track."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}: one of {', '.join(WORLDS)}")
    if not 0.0 <= video_audio <= 1.0:
        raise ValueError(f"video_audio must be between 0 and 1, not {video_audio}")
    truth: list[dict] = []
    files: dict[str, bytes] = {}

    def add(rel: str, data: bytes | None, scene: AnyScene | None = None,
            note: str | None = None, family: str | None = None, labelled: bool = True) -> None:
        """A file (data) and/or a ground-truth row (a PDF page or a record: `file#...`)."""
        if data is not None:
            files[rel] = data
        if not labelled:
            return
        row = {"file": rel, "key": scene.key if scene else None,
               "scene": dataclasses.asdict(scene) if scene else None}
        if world != "simple":
            row["family"] = family
        if note:
            row["note"] = note
        truth.append(row)

    suffix = "" if world == "simple" else f"-{world}"
    for kind, n, ext in (("images", n_images, "png"), ("texts", n_texts, "txt")):
        rng = random.Random(f"loom-corpus-{seed}-{kind}{suffix}")  # independent scene draws
        order = list(range(n))
        rng.shuffle(order)
        draws = _scenes(rng, kind, world)
        for i in range(n):
            scene, family = next(draws)
            if kind == "images":
                add(f"images/img-{order[i]:05d}.{ext}", _render(scene, rng), scene, family=family)
            else:
                add(f"texts/doc-{order[i]:05d}.{ext}", _describe(scene, rng).encode(), scene,
                    family=family)

    if world == "multimodal":
        _add_media(add, seed, max(1, n_images // 2) if media is None else media, video_audio)

    n_bad = 0
    if bad_files:
        rng = random.Random(f"loom-corpus-{seed}-bad{suffix}")
        scene = random_rich_scene(rng) if world != "simple" else random_scene(rng)
        png = _render(scene, rng)
        add("texts/doc-empty.txt", b"", note="empty")
        add("images/img-truncated.png", png[: len(png) // 2], note="truncated")
        add("texts/doc-mislabeled.txt", png, scene, note="mislabeled: a PNG named .txt")
        add("misc/blob.bin", b"\x00\x01" + rng.randbytes(2046), note="binary garbage")
        if n_images:
            first = next(r for r in truth if r["file"] == "images/img-00000.png")
            scene = (RichScene.from_dict(first["scene"]) if world != "simple"
                     else Scene(**first["scene"]))
            add("images/copy-of-first.png", files[first["file"]], scene,
                note="duplicate of images/img-00000.png", family=first.get("family"))
        n_bad = sum(1 for r in truth if r.get("note"))

    media = storage.join(out_dir, "media")
    for rel, data in sorted(files.items()):
        storage.write_bytes(storage.join(media, *rel.split("/")), data)
    truth.sort(key=lambda r: r["file"])
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in truth)
    storage.write_bytes(storage.join(out_dir, "ground_truth.jsonl"), lines.encode())
    counts = {"images": n_images, "texts": n_texts, "bad": n_bad, "files": len(files)}
    if world == "multimodal":
        prefix = {"videos": "videos/", "audio": "audio/", "pages": "pages/",
                  "records": "records/records.jsonl#"}
        counts |= {k: sum(1 for r in truth if r["file"].startswith(p) and r.get("key"))
                   for k, p in prefix.items()}
    return counts


def _every(i: int, share: float) -> bool:
    """Whether item i is one of a `share` of items spread evenly, starting at item 0 (0.5:
    items 0, 2, 4, ...; 1: all; 0: none)."""
    return math.ceil((i + 1) * share) > math.ceil(i * share)


def _add_media(add, seed: int, n: int, video_audio: float) -> None:
    """Videos (a `video_audio` share of them, spread evenly, with an audio track: 0.5 is
    every other one), audio clips, two-page PDFs (a scene and a near miss of it) and JSONL
    records, n of each (n // 2 PDFs)."""
    for kind in ("videos", "audio", "pages", "records"):
        rng = random.Random(f"loom-corpus-{seed}-{kind}-multimodal")
        order = list(range(n))
        rng.shuffle(order)
        draws = _rich_families(rng, kind)
        if kind == "pages":
            for i in range(n // 2):
                pages = [next(draws) for _ in range(2)]
                data = render_pdf([(sc, describe_rich(sc, rng)) for sc, _ in pages])
                rel = f"pages/doc-{order[i]:05d}.pdf"
                add(rel, data, labelled=False)
                for p, (sc, fam) in enumerate(pages):
                    add(f"{rel}#p{p}", None, sc, family=fam)
            continue
        lines = []
        for i in range(n):
            scene, family = next(draws)
            if kind == "videos":
                add(f"videos/clip-{order[i]:05d}.mp4",
                    render_video(scene, rng, side=IMAGE_SIDE, audio=_every(i, video_audio)),
                    scene,
                    family=family)
            elif kind == "audio":
                add(f"audio/clip-{order[i]:05d}.wav", render_audio(scene, rng), scene,
                    family=family)
            else:
                name = f"rec-{order[i]:05d}"
                add(f"records/{name}.png", render_rich(scene, rng, side=IMAGE_SIDE), scene,
                    family=family)
                add(f"records/{name}.wav", render_audio(scene, rng), scene, family=family)
                lines.append((order[i], {"id": name, "parts": [
                    {"text": describe_rich(scene, rng)}, {"image": f"{name}.png"},
                    {"audio": f"{name}.wav"}]}, scene, family))
        if lines:
            lines.sort(key=lambda x: x[0])
            body = "".join(json.dumps(rec, sort_keys=True) + "\n" for _, rec, _, _ in lines)
            add("records/records.jsonl", body.encode(), labelled=False)
            for idx, (_, _, scene, family) in enumerate(lines):
                add(f"records/records.jsonl#{idx}", None, scene, family=family)

