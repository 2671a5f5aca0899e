"""Encoder inputs made with a checkpoint's own preprocessing, or a refusal naming why not.

Examples store token ids from the tokenizer of the ingest that made them; a checkpoint
trained on another corpus has another tokenizer, and feeding it foreign ids gives
silently wrong scores (a demo checkpoint on another corpus scored text->text R@1 0.000).
So every side that reaches the encoder is prepared here: text is re-tokenized from the
Example's own text with the checkpoint's tokenizer, and what cannot be redone from a
stored Example (frame size, mel bins, the decoding settings behind them) is checked
against the checkpoint and refused with InputMismatch (a ValueError: CLI exit 2).
"""

from __future__ import annotations

from loom.models.encoder import EncoderConfig
from loom.schemas import storage
from loom.schemas.records import nonempty
from loom.schemas.spec import SPEC_FILE, PreprocessingSpec
from loom.transforms.items import example_to_item, retokenize_item, text_to_item
from loom.transforms.tokenizer import TextTokenizer

# Spec fields that do not change what the encoder reads from a stored Example: text is
# re-tokenized here, and the rest are ingest policies (limits, storage codec).
_NEUTRAL = frozenset({"tokenizer_json", "max_text_tokens", "max_text_chars", "vocab_size",
                      "image_codec", "image_quality", "max_image_pixels", "audio_cap_s",
                      "audio_hard_limit_s", "pdf_max_pages"})


def examples_spec(examples_dir: str) -> PreprocessingSpec | None:
    """The spec an ingest version wrote beside its Examples (None for hand-made datasets)."""
    uri = storage.join(examples_dir, SPEC_FILE)
    if not storage.exists(uri):
        return None
    return PreprocessingSpec.model_validate_json(storage.read_bytes(uri))


def shard_item_prep(spec: PreprocessingSpec, enc: EncoderConfig):
    """For the trainer: a function that re-tokenizes a shard's ITEM from its text with the
    checkpoint's tokenizer (an HF trunk's; shards hold ingest's ids), or None when the
    shards' own ids are the encoder's (loom's encoder, trained on ingest's tokenizer)."""
    if not enc.trunk:
        return None
    tokenizer = TextTokenizer.from_json(spec.tokenizer_json)
    return lambda item: retokenize_item(item, tokenizer, spec.max_text_tokens)


class InputMismatch(ValueError):
    """Inputs the checkpoint cannot read the way it was trained (CLI exit 2)."""


class Preprocessor:
    """Examples and query texts as ITEMs for one checkpoint (its spec and encoder config)."""

    def __init__(self, spec: PreprocessingSpec, encoder: EncoderConfig, checkpoint: str):
        if not spec.tokenizer_json:
            raise InputMismatch(f"checkpoint {checkpoint} carries no tokenizer in its "
                                "preprocessing spec")
        self.spec, self.encoder, self.checkpoint = spec, encoder, checkpoint
        self.tokenizer = TextTokenizer.from_json(spec.tokenizer_json)

    def check_corpus(self, corpus_spec: PreprocessingSpec | None, where: str) -> None:
        """Refuse Examples decoded with other settings than the checkpoint's (frame size,
        patching, frame policy, audio features); text differences are redone here."""
        if corpus_spec is None:
            return
        mine, theirs = self.spec.model_dump(), corpus_spec.model_dump()
        diff = sorted(k for k in mine.keys() | theirs.keys()
                      if k not in _NEUTRAL and mine.get(k) != theirs.get(k))
        if diff:
            shown = ", ".join(f"{k} {theirs.get(k)!r} (checkpoint: {mine.get(k)!r})"
                              for k in diff)
            raise InputMismatch(f"{where} was decoded with other settings than checkpoint "
                                f"{self.checkpoint}: {shown}; re-ingest it with the "
                                "checkpoint's spec (loom backfill does)")

    def example(self, example: dict) -> dict:
        """The Example as the checkpoint reads it: its text re-tokenized, its frames and
        audio features checked against the encoder's sizes."""
        return example_to_item(self.retokenized(example))

    def retokenized(self, example: dict) -> dict:
        """The Example row with its parts as the checkpoint reads them (see `example`)."""
        return example | {"parts": [self._part(p, example["id"]) for p in example["parts"]]}

    def query(self, item_id: str, text: str) -> dict:
        return text_to_item(item_id, text, self.tokenizer, self.spec.max_text_tokens)

    def _part(self, part: dict, example_id: str) -> dict:
        enc = self.encoder
        if part.get("pixels") and (part.get("height"), part.get("width")) != (
                enc.image_size, enc.image_size):
            raise InputMismatch(
                f"example {example_id} has {part.get('height')}x{part.get('width')} frames; "
                f"checkpoint {self.checkpoint} reads {enc.image_size}x{enc.image_size}")
        if nonempty(part.get("features")) and part.get("feature_bins") != enc.n_mels:
            raise InputMismatch(
                f"example {example_id} has {part.get('feature_bins')} mel bins; checkpoint "
                f"{self.checkpoint} reads {enc.n_mels}")
        if part.get("text"):
            return part | {"tokens": self.tokenizer.encode(part["text"],
                                                          self.spec.max_text_tokens)}
        return part
