"""Checkpoint registry: `<root>/<run>/step-<n>/` plus `<root>/<run>/latest.json`.

Weights are safetensors, optimizer state a tensors-only torch file loaded with
`weights_only=True`: nothing from a bucket is ever unpickled. A checkpoint carries
its preprocessing spec and configs so every later stage applies the same inputs.
"""

from __future__ import annotations

import dataclasses
import io
import json

import torch
from loom.models.encoder import EncoderConfig
from loom.models.trunk import build_encoder
from loom.schemas import storage
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

LATEST = "latest.json"
BEST = "best.json"  # a run's best validation step (loom train --keep best)


@dataclasses.dataclass
class LoadedCheckpoint:
    id: str
    uri: str
    model: torch.nn.Module  # MultimodalEncoder, or HFTrunkEncoder on an HF trunk
    encoder_config: EncoderConfig
    spec: PreprocessingSpec
    state: dict
    train_config: dict


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(root: str, run: str, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None, spec: PreprocessingSpec,
                    encoder_config: EncoderConfig, train_config: dict,
                    data_position: dict, extra_state: dict | None = None) -> str:
    """Writes every file, then moves `latest.json`: a reader never sees half a step."""
    d = storage.join(root, run, step_name(step))
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    storage.write_atomic(storage.join(d, "model.safetensors"), st_save(state_dict))
    if optimizer is not None:
        buf = io.BytesIO()
        torch.save(optimizer.state_dict(), buf)
        storage.write_atomic(storage.join(d, "optimizer.pt"), buf.getvalue())
    storage.write_atomic(storage.join(d, SPEC_FILE), spec.model_dump_json().encode())
    storage.write_atomic(storage.join(d, "encoder.json"), encoder_config.model_dump_json().encode())
    storage.write_atomic(storage.join(d, "train_config.json"),
                         json.dumps(train_config, sort_keys=True, default=str).encode())
    state = {"step": step, "data_position": data_position} | (extra_state or {})
    storage.write_atomic(storage.join(d, "state.json"), json.dumps(state).encode())
    ckpt_id = f"{run}/{step_name(step)}"
    storage.write_atomic(storage.join(root, run, LATEST),
                         json.dumps({"checkpoint": ckpt_id, "step": step}).encode())
    return ckpt_id


def resolve(root: str, ref: str) -> str:
    """`latest`, `<run>` (its latest), `<run>/best` or `<run>/step-<n>` -> a concrete
    checkpoint id.

    `latest` alone means the newest complete step of the newest run under root.
    """
    if ref == "latest":
        runs = []
        for run_dir in storage.list_dirs(root):
            uri = storage.join(run_dir, LATEST)
            if storage.exists(uri):
                info = json.loads(storage.read_bytes(uri))
                runs.append((storage.list_files(uri)[0].mtime_ns, info["checkpoint"]))
        if not runs:
            raise FileNotFoundError(f"no checkpoint under {root}")
        return max(runs)[1]
    if ref.endswith("/best"):  # the run's best validation step (loom train --keep best)
        uri = storage.join(root, ref.removesuffix("/best"), BEST)
        if not storage.exists(uri):
            raise FileNotFoundError(f"run {ref.removesuffix('/best')} under {root} has no "
                                    "best checkpoint (train with --val-shards and --keep best)")
        return json.loads(storage.read_bytes(uri))["checkpoint"]
    if "/step-" in ref:
        if not storage.exists(storage.join(root, ref, "model.safetensors")):
            raise FileNotFoundError(f"no checkpoint {ref} under {root}")
        return ref
    uri = storage.join(root, ref, LATEST)
    if not storage.exists(uri):
        raise FileNotFoundError(f"run {ref} has no complete checkpoint under {root}")
    return json.loads(storage.read_bytes(uri))["checkpoint"]


def checkpoint_configs(root: str, ckpt_id: str) -> tuple[PreprocessingSpec, EncoderConfig]:
    """A checkpoint's preprocessing spec and encoder config, without reading its weights."""
    d = storage.join(root, ckpt_id)
    spec = PreprocessingSpec.model_validate_json(storage.read_bytes(storage.join(d, SPEC_FILE)))
    enc = EncoderConfig.model_validate_json(storage.read_bytes(storage.join(d, "encoder.json")))
    return spec, enc


def load_checkpoint(root: str, ckpt_id: str, with_optimizer: bool = False) -> LoadedCheckpoint:
    d = storage.join(root, ckpt_id)
    spec, enc = checkpoint_configs(root, ckpt_id)
    model = build_encoder(enc)
    model.load_state_dict(st_load(storage.read_bytes(storage.join(d, "model.safetensors"))))
    model.eval()
    state = json.loads(storage.read_bytes(storage.join(d, "state.json")))
    if with_optimizer and storage.exists(storage.join(d, "optimizer.pt")):
        state["optimizer"] = torch.load(
            io.BytesIO(storage.read_bytes(storage.join(d, "optimizer.pt"))), weights_only=True
        )
    train_config = json.loads(storage.read_bytes(storage.join(d, "train_config.json")))
    return LoadedCheckpoint(ckpt_id, d, model, enc, spec, state, train_config)
