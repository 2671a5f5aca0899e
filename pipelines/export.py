"""Export a checkpoint to a format serving stacks load without loom.

`onnx`: loom's whole encoder (every modality) as one graph, with the preprocessing spec,
encoder config and a README that documents the collate (models/onnx_export.py).
`hf` / `sentence-transformers`: a checkpoint trained on a Hugging Face trunk (`loom train
--trunk hf:PATH`) as the trunk's stock architecture plus loom's head, or as a
sentence-transformers folder for the text side (models/hf_export.py). loom's own encoder
refuses them (exit 2): it has no stock architecture; export it as onnx.
"""

from __future__ import annotations

import enum
import json
import pathlib
import tempfile

from loom.models.checkpoint import LoadedCheckpoint, checkpoint_configs, load_checkpoint, resolve
from loom.pipelines.common import BadInput
from loom.schemas import storage
from loom.schemas.spec import SPEC_FILE


class ExportFormat(str, enum.Enum):
    ONNX = "onnx"
    HF = "hf"
    SENTENCE_TRANSFORMERS = "sentence-transformers"


def run_export(checkpoint: str, checkpoint_root: str, fmt: ExportFormat, output: str) -> dict:
    """Writes `output/`: for onnx model.onnx, spec.json, encoder.json, export.json,
    README.md; for hf and sentence-transformers the libraries' own folder layout."""
    fmt = ExportFormat(fmt)
    root = storage.absolute(checkpoint_root)
    ckpt_id = resolve(root, checkpoint)
    trunk = checkpoint_configs(root, ckpt_id)[1].trunk
    if fmt == ExportFormat.ONNX and trunk:
        raise BadInput(f"{ckpt_id} is trained on the trunk {trunk}: export it as hf (the "
                       "stock model plus loom's head) or sentence-transformers")
    if fmt != ExportFormat.ONNX and not trunk:
        raise BadInput(f"--format {fmt.value} needs a checkpoint trained on a Hugging Face "
                       f"trunk (loom train --trunk hf:PATH); {ckpt_id} is loom's own "
                       "encoder: export it as onnx")
    loaded = load_checkpoint(root, ckpt_id)
    output = storage.absolute(output)
    if fmt != ExportFormat.ONNX:
        return _export_hf(loaded, fmt, root, output)
    from loom.models.onnx_export import INPUTS, OPSET, export_onnx, export_readme

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


def _export_hf(loaded: LoadedCheckpoint, fmt: ExportFormat, root: str, output: str) -> dict:
    """Writes the folder locally with the libraries' own savers, then copies every file."""
    from loom.models import hf_export

    writer = (hf_export.write_hf if fmt == ExportFormat.HF
              else hf_export.write_sentence_transformers)
    if fmt == ExportFormat.SENTENCE_TRANSFORMERS:
        try:
            import sentence_transformers  # noqa: F401
        except ImportError:
            raise BadInput("--format sentence-transformers needs the sentence-transformers "
                           "package (pip install sentence-transformers)") from None
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        writer(loaded.model, loaded.spec, loaded.encoder_config, folder)
        meta = {"format": fmt.value, "checkpoint": loaded.id, "checkpoint_root": root,
                "trunk": loaded.encoder_config.trunk,
                "embed_dims": list(loaded.encoder_config.embed_dims), "normalize": True}
        (folder / "export.json").write_text(json.dumps(meta, indent=2))
        (folder / SPEC_FILE).write_text(loaded.spec.model_dump_json())
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            storage.write_atomic(storage.join(output, path.relative_to(folder).as_posix()),
                                 path.read_bytes())
    return {"stage": "export", "format": fmt.value, "checkpoint": loaded.id, "uri": output,
            "counts": {"files": len(files)}, "datasets": {"model": output}}
