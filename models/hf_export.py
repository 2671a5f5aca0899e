"""A checkpoint on a Hugging Face trunk as folders that `transformers` and
sentence-transformers load on their own.

`hf`: the trunk in its stock architecture (`AutoModel.from_pretrained`, no
trust_remote_code), the tokenizer, and loom's head beside them: `loom_head.py` (a copy of
models/hf_head.py, plain torch), its weights and constructor arguments. Text alone needs
only the head's `proj`: mean-pool the trunk's last hidden states over the attention mask,
apply `proj`, take the first d values and L2-normalize them.

`sentence-transformers`: the text side as Transformer -> mean Pooling -> Dense (`proj`,
identity activation) -> Normalize. A query's task instruction is a prompt left out of the
pooling (`include_prompt=False`): `encode(query, prompt="<task> | ")` is loom's query.

Both write to a local folder first (the libraries' save_pretrained), then copy the files
to `output` through loom's storage (a bucket works).
"""

from __future__ import annotations

import inspect
import json
import os
import pathlib
import tempfile

import torch
from loom.models import hf_head
from loom.models.encoder import EncoderConfig
from loom.schemas.spec import PreprocessingSpec

HEAD_README = """# loom encoder on a Hugging Face trunk ({model_type})

`config.json` + `model.safetensors` are the stock `{architecture}` (load with
`AutoModel.from_pretrained(DIR)`, no trust_remote_code); the tokenizer is the one loom
trained with (at most {max_text} tokens of text, plus [CLS] and [SEP]).

loom's head is `loom_head.py` (plain torch, `LoomHead`), with `loom_head.json` (its
constructor arguments, `init`) and `loom_head.safetensors` (its weights).

Text: mean-pool the trunk's `last_hidden_state` over the attention mask, apply
`head.proj` ([{hidden}] -> [{out_dim}]), then for a Matryoshka size d in {dims} take the
first d values and L2-normalize them.

```python
import importlib.util, json, torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
trunk, tok = AutoModel.from_pretrained(DIR).eval(), AutoTokenizer.from_pretrained(DIR)
spec = importlib.util.spec_from_file_location("loom_head", f"{{DIR}}/loom_head.py")
mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
head = mod.LoomHead(**json.load(open(f"{{DIR}}/loom_head.json"))["init"]).eval()
head.load_state_dict(load_file(f"{{DIR}}/loom_head.safetensors"))
batch = tok(texts, padding=True, truncation=True, max_length={max_len}, return_tensors="pt")
h = trunk(**batch).last_hidden_state
m = batch["attention_mask"].unsqueeze(-1).float()
emb = torch.nn.functional.normalize(head.proj((h * m).sum(1) / m.sum(1))[:, :d], dim=-1)
```

A query's task instruction ("<task> |") goes first and is left out of the pooling
together with [CLS]. Images, video frames and audio: `head(trunk, tokens, token_mask,
patches, patch_mask, audio, audio_mask, instruction)` takes loom's collate (token ids
without [CLS]/[SEP]; see the ONNX export's README for the layout, with the sizes in
`loom_head.json`).
"""


def _tokenizer(spec: PreprocessingSpec, enc: EncoderConfig):
    """The checkpoint's tokenizer (the trunk's, as its spec holds it) as a transformers
    fast tokenizer with its special tokens named."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(spec.tokenizer_json)
    name = backend.id_to_token
    specials = {"pad_token": name(0), "cls_token": name(enc.trunk_cls_id),
                "sep_token": name(enc.trunk_sep_id)}
    for key, token in (("unk_token", "[UNK]"), ("mask_token", "[MASK]")):
        if backend.token_to_id(token) is not None:
            specials[key] = token
    return PreTrainedTokenizerFast(tokenizer_object=backend,
                                   model_max_length=spec.max_text_tokens + 2, **specials)


def head_init(enc: EncoderConfig) -> dict:
    """LoomHead's constructor arguments for `enc` (as HFTrunkEncoder builds it)."""
    return {"hidden": enc.dim, "out_dim": enc.out_dim, "patch_dim": enc.patch_dim,
            "patch_positions": enc.patches_per_frame * enc.max_frames, "n_mels": enc.n_mels,
            "audio_positions": enc.max_audio_tokens, "cls_id": enc.trunk_cls_id,
            "sep_id": enc.trunk_sep_id}


def write_hf(model: torch.nn.Module, spec: PreprocessingSpec, enc: EncoderConfig,
             folder: pathlib.Path) -> None:
    """The `hf` export into a local folder."""
    from safetensors.torch import save_file

    model.trunk.save_pretrained(folder)
    _tokenizer(spec, enc).save_pretrained(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(state, str(folder / "loom_head.safetensors"))
    sizes = {"image_size": enc.image_size, "patch_size": enc.patch_size,
             "max_frames": enc.max_frames, "n_mels": enc.n_mels,
             "max_audio_tokens": enc.max_audio_tokens, "max_text_tokens": enc.max_text_tokens}
    (folder / "loom_head.json").write_text(json.dumps(
        {"init": head_init(enc), "embed_dims": list(enc.embed_dims), "pooling": "mean",
         "normalize": True, "collate": sizes}, indent=2))
    (folder / "loom_head.py").write_text(inspect.getsource(hf_head))
    conf = model.trunk.config
    (folder / "README.md").write_text(HEAD_README.format(
        model_type=conf.model_type, architecture=type(model.trunk).__name__,
        max_text=spec.max_text_tokens, max_len=spec.max_text_tokens + 2, hidden=enc.dim,
        out_dim=enc.out_dim, dims=list(enc.embed_dims)))


def write_sentence_transformers(model: torch.nn.Module, spec: PreprocessingSpec,
                                enc: EncoderConfig, folder: pathlib.Path) -> None:
    """The `sentence-transformers` export (text side) into a local folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    with tempfile.TemporaryDirectory() as tmp:
        write_hf(model, spec, enc, pathlib.Path(tmp))
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        transformer = Transformer(tmp, max_seq_length=spec.max_text_tokens + 2)
        proj = model.head.proj
        dense = Dense(enc.dim, enc.out_dim, bias=True, activation_function=torch.nn.Identity(),
                      init_weight=proj.weight.detach().clone(),
                      init_bias=proj.bias.detach().clone())
        st = SentenceTransformer(modules=[transformer, Pooling(enc.dim, "mean",
                                                               include_prompt=False),
                                          dense, Normalize()], device="cpu")
        st.save(str(folder))
