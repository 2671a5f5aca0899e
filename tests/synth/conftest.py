from __future__ import annotations

import hashlib
import io
import random

import numpy as np
import pytest
from loom.schemas.records import EXAMPLE, empty_part, to_table
from loom.synth.client import LLMConfig, make_client
from loom.synth.offline_server import offline_server
from loom.transforms import scenes
from PIL import Image


@pytest.fixture(scope="session")
def server_url():
    with offline_server() as url:
        yield url


@pytest.fixture(scope="session")
def offline_client(server_url):
    return make_client(LLMConfig(), base_url=server_url)


def image_example(tmp_path, scene: scenes.Scene, rng: random.Random, *, write=True,
                  pixels=True) -> dict:
    data = scenes.render_image(scene, rng)
    eid = hashlib.sha256(data).hexdigest()
    uri = str(tmp_path / f"{eid[:12]}.png")
    if write:
        (tmp_path / f"{eid[:12]}.png").write_bytes(data)
    part = empty_part("image")
    if pixels:
        arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        part |= {"pixels": arr.tobytes(), "height": arr.shape[0], "width": arr.shape[1],
                 "frames": 1, "source_uri": uri, "mime": "image/png"}
    return {"id": eid, "modality": "image", "parts": [part], "source_uris": [uri],
            "mime": "image/png", "size_bytes": len(data), "metadata": "{}"}


def text_example(text: str) -> dict:
    eid = hashlib.sha256(text.encode()).hexdigest()
    part = empty_part("text") | {"text": text}
    return {"id": eid, "modality": "text", "parts": [part], "source_uris": [f"mem://{eid[:8]}.txt"],
            "mime": "text/plain", "size_bytes": len(text), "metadata": "{}"}


def batch_of(rows: list[dict]):
    return to_table(rows, EXAMPLE).to_batches()[0]
