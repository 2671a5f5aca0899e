"""A Hugging Face `transformers` model as the encoder's fusion trunk (`--trunk hf:PATH`).

The trunk is a BERT-like (bidirectional) model in a local folder (`save_pretrained`
layout: config.json, weights, a fast tokenizer). loom wraps it with models/hf_head.py:
its own projections for frames and audio feed the trunk's input embeddings beside the
trunk's text token embeddings, and its tokenizer replaces ingest's. The checkpoint keeps
the trunk's config inline (encoder.json) and its tokenizer as the spec's tokenizer, so a
checkpoint loads without the folder it started from; only training's first step reads
the pretrained weights from PATH.

Decoder-only (causal) models are refused: their attention is not bidirectional.
"""

from __future__ import annotations

import os

import torch
from loom.models.encoder import EncoderConfig
from loom.models.hf_head import LoomHead
from loom.transforms.tokenizer import PAD_ID
from torch import nn

PREFIX = "hf:"
# Positions kept for text ([CLS] + max_text_tokens + [SEP]) and audio before frames.
_SPECIALS = 2


class TrunkError(ValueError):
    """A trunk loom cannot use (CLI exit 2)."""


def trunk_path(trunk: str) -> str:
    if not trunk.startswith(PREFIX):
        raise TrunkError(f"trunk {trunk!r}: expected hf:PATH (a local Hugging Face model "
                         "folder)")
    return os.path.abspath(os.path.expanduser(trunk[len(PREFIX):]))


def _offline() -> None:
    """Never reach for the Hub: a trunk is a local folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def inspect_trunk(trunk: str) -> tuple[dict, str, int, int]:
    """(the trunk's config as a dict, its tokenizer JSON, [CLS] id, [SEP] id), or
    TrunkError naming what is wrong with the folder."""
    _offline()
    from transformers import AutoConfig, AutoTokenizer

    path = trunk_path(trunk)
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TrunkError(f"trunk {trunk}: no config.json in {path} (a folder written by "
                         "save_pretrained)")
    try:
        config = AutoConfig.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise TrunkError(f"trunk {trunk}: {str(exc).splitlines()[0]}") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    # the masked-LM families are the bidirectional encoders (BERT, RoBERTa, ModernBERT...)
    if getattr(config, "is_decoder", False) or (
            config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        raise TrunkError(f"trunk {trunk}: {config.model_type} is not a bidirectional "
                         "encoder (a masked-LM family such as BERT); decoders are not "
                         "supported")
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TrunkError(f"trunk {trunk}: its tokenizer has no fast (tokenizers) version")
    if tok.pad_token_id != PAD_ID or tok.cls_token_id is None or tok.sep_token_id is None:
        raise TrunkError(f"trunk {trunk}: loom needs a BERT-like tokenizer ([PAD] = "
                         f"{PAD_ID}, [CLS] and [SEP]); this one has pad "
                         f"{tok.pad_token_id}, cls {tok.cls_token_id}, sep {tok.sep_token_id}")
    backend = type(backend).from_str(backend.to_str())  # no truncation/padding state
    backend.no_truncation()
    backend.no_padding()
    return config.to_dict(), backend.to_str(), int(tok.cls_token_id), int(tok.sep_token_id)


def trunk_encoder_config(trunk: str, base: EncoderConfig,
                         embed_dims: tuple[int, ...] | None) -> tuple[EncoderConfig, str]:
    """`base` (the spec's frame and audio sizes) on the trunk: its hidden size, layers and
    heads, its vocabulary; frames capped so text, audio and frames fit the trunk's
    positions. Returns the config and the trunk's tokenizer JSON."""
    config, tokenizer_json, cls_id, sep_id = inspect_trunk(trunk)
    hidden = int(config["hidden_size"])
    positions = int(config.get("max_position_embeddings") or 1 << 30)
    room = positions - base.max_text_tokens - _SPECIALS - base.max_audio_tokens
    if room < base.patches_per_frame:
        raise TrunkError(f"trunk {trunk}: {positions} positions leave no room for one frame "
                         f"after {base.max_text_tokens} text and {base.max_audio_tokens} "
                         "audio tokens")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    dims = embed_dims or (hidden // 4, hidden // 2, hidden)
    enc = base.model_copy(update={
        # absolute: train workers run in another directory
        "trunk": PREFIX + trunk_path(trunk), "trunk_config": config, "trunk_cls_id": cls_id,
        "trunk_sep_id": sep_id, "vocab_size": min(vocab, int(config["vocab_size"])),
        "dim": hidden, "layers": int(config.get("num_hidden_layers") or 0),
        "heads": int(config.get("num_attention_heads") or 0), "embed_dims": tuple(dims),
        "max_frames": max(1, min(base.max_frames, room // base.patches_per_frame)),
    })
    return EncoderConfig.model_validate(enc.model_dump()), tokenizer_json


class HFTrunkEncoder(nn.Module):
    """The trunk plus LoomHead; same inputs and output as MultimodalEncoder."""

    def __init__(self, cfg: EncoderConfig, pretrained: bool = False):
        super().__init__()
        _offline()
        from transformers import AutoConfig, AutoModel

        self.cfg = cfg
        if pretrained:  # training's start: the folder's weights
            self.trunk = AutoModel.from_pretrained(trunk_path(cfg.trunk))
        else:  # a checkpoint's own weights load over this
            conf = dict(cfg.trunk_config)
            conf = AutoConfig.for_model(conf.pop("model_type"), **conf)
            self.trunk = AutoModel.from_config(conf)
        self.head = LoomHead(cfg.dim, cfg.out_dim, cfg.patch_dim,
                             cfg.patches_per_frame * cfg.max_frames, cfg.n_mels,
                             cfg.max_audio_tokens, cfg.trunk_cls_id, cfg.trunk_sep_id)

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.trunk, "is_gradient_checkpointing", False))

    @grad_checkpointing.setter
    def grad_checkpointing(self, on: bool) -> None:
        if on:
            self.trunk.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk, **inputs)


def build_encoder(cfg: EncoderConfig, pretrained: bool = False) -> nn.Module:
    """loom's own encoder, or the HF trunk one for a config with a trunk."""
    if cfg.trunk:
        return HFTrunkEncoder(cfg, pretrained)
    from loom.models.encoder import MultimodalEncoder

    return MultimodalEncoder(cfg)


def initial_encoder(cfg: EncoderConfig) -> nn.Module:
    """The weights training started from, for eval's `untrained` baseline: loom's encoder
    at a (seeded) random init; an HF trunk as its folder's pretrained model with the head
    at its start (the trunk's own mean-pooled embedding), or at a random init when that
    folder is no longer there."""
    pretrained = bool(cfg.trunk) and os.path.isfile(os.path.join(trunk_path(cfg.trunk),
                                                                 "config.json"))
    return build_encoder(cfg, pretrained).eval()
