"""Demo corpus generator: seeded, offline scene images and texts plus a few bad files.

Writes ``<out>/media/`` (what ingest reads: file names carry only a shuffled index)
and ``<out>/ground_truth.jsonl`` outside it (file -> scene key), so the encoder never
sees the labels.
"""

from __future__ import annotations

import dataclasses
import json
import random

from schemas import storage
from transforms.scenes import Scene, describe, random_scene, render_image

IMAGE_SIDE = 96


def generate_corpus(out_dir: str, n_images: int, n_texts: int, seed: int = 0,
                    bad_files: bool = True) -> dict:
    """Writes the corpus; same seed -> byte-identical files. Returns file counts."""
    truth: list[dict] = []
    files: dict[str, bytes] = {}

    def add(rel: str, data: bytes, scene: Scene | None = None, note: str | None = None) -> None:
        files[rel] = data
        row = {"file": rel, "key": scene.key if scene else None,
               "scene": dataclasses.asdict(scene) if scene else None}
        if note:
            row["note"] = note
        truth.append(row)

    for kind, n, ext in (("images", n_images, "png"), ("texts", n_texts, "txt")):
        rng = random.Random(f"loom-corpus-{seed}-{kind}")  # independent scene draws
        order = list(range(n))
        rng.shuffle(order)
        for i in range(n):
            scene = random_scene(rng)
            if kind == "images":
                data = render_image(scene, rng, side=IMAGE_SIDE)
                add(f"images/img-{order[i]:05d}.{ext}", data, scene)
            else:
                add(f"texts/doc-{order[i]:05d}.{ext}", describe(scene, rng).encode(), scene)

    n_bad = 0
    if bad_files:
        rng = random.Random(f"loom-corpus-{seed}-bad")
        scene = random_scene(rng)
        png = render_image(scene, rng, side=IMAGE_SIDE)
        add("texts/doc-empty.txt", b"", note="empty")
        add("images/img-truncated.png", png[: len(png) // 2], note="truncated")
        add("texts/doc-mislabeled.txt", png, scene, note="mislabeled: a PNG named .txt")
        add("misc/blob.bin", b"\x00\x01" + rng.randbytes(2046), note="binary garbage")
        if n_images:
            first = next(r for r in truth if r["file"] == "images/img-00000.png")
            add("images/copy-of-first.png", files[first["file"]], Scene(**first["scene"]),
                note="duplicate of images/img-00000.png")
        n_bad = len(files) - n_images - n_texts

    media = storage.join(out_dir, "media")
    for rel, data in sorted(files.items()):
        storage.write_bytes(storage.join(media, *rel.split("/")), data)
    truth.sort(key=lambda r: r["file"])
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in truth)
    storage.write_bytes(storage.join(out_dir, "ground_truth.jsonl"), lines.encode())
    return {"images": n_images, "texts": n_texts, "bad": n_bad, "files": len(files)}

