"""Export a checkpoint to a format serving stacks load without loom.

`onnx`: loom's whole encoder (every modality) as one graph, with the preprocessing spec,
encoder config and a README that documents the collate (models/onnx_export.py).
`hf` / `sentence-transformers` need a Hugging Face trunk, which loom's trainer does not
have yet: asking for them is a clear bad-input exit, not a half export.
"""

from __future__ import annotations

import enum
import json

from loom.models.checkpoint import load_checkpoint, resolve
from loom.pipelines.common import BadInput
from loom.schemas import storage
from loom.schemas.spec import SPEC_FILE


class ExportFormat(str, enum.Enum):
    ONNX = "onnx"
    HF = "hf"
    SENTENCE_TRANSFORMERS = "sentence-transformers"


def run_export(checkpoint: str, checkpoint_root: str, fmt: ExportFormat, output: str) -> dict:
    """Writes `output/` (model.onnx, spec.json, encoder.json, export.json, README.md)."""
    from loom.models.onnx_export import INPUTS, OPSET, export_onnx, export_readme

    fmt = ExportFormat(fmt)
    if fmt != ExportFormat.ONNX:
        raise BadInput(f"--format {fmt.value} needs a Hugging Face trunk; checkpoints of "
                       "loom's own encoder export as onnx")
    root = storage.absolute(checkpoint_root)
    ckpt_id = resolve(root, checkpoint)
    loaded = load_checkpoint(root, ckpt_id)
    output = storage.absolute(output)
    storage.write_atomic(storage.join(output, "model.onnx"), export_onnx(loaded.model))
    storage.write_atomic(storage.join(output, SPEC_FILE), loaded.spec.model_dump_json().encode())
    storage.write_atomic(storage.join(output, "encoder.json"),
                         loaded.encoder_config.model_dump_json().encode())
    meta = {"format": fmt.value, "checkpoint": ckpt_id, "checkpoint_root": root,
            "opset": OPSET, "inputs": list(INPUTS), "output": "embedding",
            "embed_dims": list(loaded.encoder_config.embed_dims), "normalize": True}
    storage.write_atomic(storage.join(output, "export.json"),
                         json.dumps(meta, indent=2).encode())
    storage.write_atomic(storage.join(output, "README.md"),
                         export_readme(loaded.encoder_config).encode())
    return {"stage": "export", "format": fmt.value, "checkpoint": ckpt_id, "uri": output,
            "datasets": {"model": storage.join(output, "model.onnx")}}
