"""Soup: average compatible checkpoints into a new checkpoint run `soup-<hash>`.

Inputs are resolved once to concrete checkpoint ids; the run name is a hash of those ids
and the normalized weights, so a rerun with the same inputs finds its run and writes
nothing. Input runs are only read: their `latest.json` never moves.
"""

from __future__ import annotations

import json

from loom.models.checkpoint import (
    LATEST,
    LoadedCheckpoint,
    load_checkpoint,
    resolve,
    save_checkpoint,
)
from loom.models.soup import average_state_dicts, normalize_weights
from loom.models.trunk import build_encoder
from loom.pipelines.common import BadInput
from loom.schemas import manifest as mf
from loom.schemas import storage
from pydantic import BaseModel


def _diff(a: BaseModel, b: BaseModel) -> list[str]:
    da, db = a.model_dump(), b.model_dump()
    return [k for k in da if da[k] != db.get(k)]


def _finished(root: str, run: str) -> str | None:
    """The run's latest checkpoint id if it exists and is marked complete."""
    latest_uri = storage.join(root, run, LATEST)
    if not storage.exists(latest_uri):
        return None
    ckpt = json.loads(storage.read_bytes(latest_uri))["checkpoint"]
    state_uri = storage.join(root, ckpt, "state.json")
    if not storage.exists(state_uri):
        return None
    return ckpt if json.loads(storage.read_bytes(state_uri)).get("complete") else None


def run_soup(checkpoints: list[str], root: str, output_root: str | None = None,
             weights: list[float] | None = None) -> dict:
    if not checkpoints:
        raise BadInput("soup needs at least one checkpoint")
    root = storage.absolute(root)
    output_root = storage.absolute(output_root) if output_root else root
    try:
        w = normalize_weights(weights, len(checkpoints))
    except ValueError as e:
        raise BadInput(f"bad soup weights: {e}") from None
    ids = []
    for ref in checkpoints:
        try:
            ids.append(resolve(root, ref))
        except FileNotFoundError as e:
            raise BadInput(str(e)) from None
    run = mf.version_id("train", ids, {"soup_weights": w}).replace("train-", "soup-", 1)
    out = {"stage": "soup", "version": run, "uri": storage.join(output_root, run),
           "checkpoint_root": output_root, "counts": {"inputs": len(ids)}}
    if (done := _finished(output_root, run)) is not None:
        return out | {"checkpoint": done,
                      "datasets": {"checkpoint": storage.join(output_root, done)},
                      "reused": True}
    loaded: list[LoadedCheckpoint] = [load_checkpoint(root, i) for i in ids]
    base = loaded[0]
    for other in loaded[1:]:
        if other.encoder_config != base.encoder_config:
            fields = ", ".join(_diff(base.encoder_config, other.encoder_config))
            raise BadInput(f"cannot soup {other.id} with {base.id}: encoder configs differ "
                           f"({fields})")
        if other.spec != base.spec:
            fields = ", ".join(_diff(base.spec, other.spec))
            raise BadInput(f"cannot soup {other.id} with {base.id}: preprocessing specs differ "
                           f"({fields})")
    try:
        avg = average_state_dicts([c.model.state_dict() for c in loaded], w)
    except ValueError as e:
        raise BadInput(f"incompatible checkpoints: {e}") from None
    model = build_encoder(base.encoder_config)
    model.load_state_dict(avg)
    step = max(int(c.state.get("step", 0)) for c in loaded)
    storage.write_atomic(storage.join(output_root, run, "lineage.json"), json.dumps({
        "soup_of": ids, "weights": w, "input_root": root,
    }).encode())
    ckpt = save_checkpoint(output_root, run, step, model, None, base.spec, base.encoder_config,
                           {"soup_of": ids, "weights": w}, {}, {"complete": True})
    return out | {"checkpoint": ckpt,
                  "datasets": {"checkpoint": storage.join(output_root, ckpt)},
                  "reused": False}
