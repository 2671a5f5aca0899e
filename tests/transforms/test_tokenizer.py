from __future__ import annotations

import json
import random

from loom.transforms.scenes import describe, random_scene
from loom.transforms.tokenizer import TextTokenizer, train_tokenizer


def corpus(n: int = 200) -> list[str]:
    rng = random.Random(0)
    return [describe(random_scene(rng), rng) for _ in range(n)]


def test_train_deterministic_and_specials():
    a = train_tokenizer(iter(corpus()), 300)
    assert a == train_tokenizer(iter(corpus()), 300)
    vocab = json.loads(a)["model"]["vocab"]
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3]
    assert len(vocab) <= 300


def test_encode_round_trip_truncation_and_cache():
    s = train_tokenizer(corpus(), 300)
    tok = TextTokenizer.from_json(s)
    assert TextTokenizer.from_json(s) is tok  # loaded once per process
    assert tok.pad_id == 0 and 0 < tok.vocab_size <= 300
    ids = tok.encode("A SMALL red Circle sits in the top left.", 64)
    assert 0 not in ids and 1 not in ids  # no padding, no unknowns for corpus words
    assert tok.decode(ids) == "a small red circle sits in the top left."
    assert tok.encode("A small red circle sits in the top left.", 3) == ids[:3]
    assert tok.encode_batch(["small red", "blue square"], 64) == [
        tok.encode("small red", 64), tok.encode("blue square", 64)]
    unknown = tok.encode("zebra", 8)
    assert unknown and all(i < tok.vocab_size for i in unknown)
