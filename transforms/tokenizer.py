"""A WordPiece tokenizer trained on the corpus; the JSON travels inside the spec."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP]  # ids 0, 1, 2, 3
PAD_ID = 0


def _skeleton(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()  # whitespace + punctuation
    tok.decoder = decoders.WordPiece()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> str:
    """Trains offline from an iterator of texts; returns the tokenizer JSON.

    A WordPiece vocabulary of the corpus' characters (word-initial and ``##``
    continuation) plus its most frequent words, ties broken by the word itself. The
    `tokenizers` trainers break ties in hash-map order and differ from run to run;
    this is byte-identical for the same texts, so spec digests are stable.
    """
    probe = _skeleton({UNK: 0})
    norm, pre = probe.normalizer, probe.pre_tokenizer
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)))
    chars: Counter[str] = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    budget = vocab_size - len(SPECIAL_TOKENS)
    alphabet = [c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))]
    alphabet = alphabet[: max(0, budget // 4)]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for c in alphabet:
        for piece in (c, "##" + c):
            vocab.setdefault(piece, len(vocab))
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    return _skeleton(vocab).to_str()


class TextTokenizer:
    """Encodes text to token ids (truncated, never padded; pad id is 0)."""

    pad_id = PAD_ID

    def __init__(self, tok: Tokenizer):
        self._tok = tok
        if tok.token_to_id(PAD) != PAD_ID:
            raise ValueError(f"tokenizer must map {PAD} to id {PAD_ID}")

    @classmethod
    def from_json(cls, s: str) -> TextTokenizer:
        return _load(s)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, max_tokens: int) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids[:max_tokens]

    def encode_batch(self, texts: list[str], max_tokens: int) -> list[list[int]]:
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids[:max_tokens] for e in encs]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)


@functools.lru_cache(maxsize=8)
def _load(s: str) -> TextTokenizer:
    """One loaded tokenizer per JSON (keyed by the string's hash) and process."""
    return TextTokenizer(Tokenizer.from_str(s))
