"""`loom train --trunk hf:PATH` (issue 15, item 1): real Ray Train on a tiny local BERT.

The trainer re-tokenizes every shard ITEM from its text with the trunk's tokenizer, starts
from the folder's weights, and the checkpoint carries the trunk's config and tokenizer,
so the model seam (eval, mine, backfill) reads with them."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from loom.models.checkpoint import load_checkpoint
from loom.models.handler import EncoderHandler
from loom.models.inputs import shard_item_prep
from loom.models.trunk import build_encoder, inspect_trunk
from loom.pipelines.common import BadInput
from loom.pipelines.ray.train import TrainCollate
from loom.pipelines.shard import run_shard, spec_of
from loom.pipelines.train import TrainConfig, TrainStage, encoder_for, on_trunk, run_train
from loom.schemas import manifest as mf
from loom.transforms.tokenizer import TextTokenizer

from tests.pipelines.test_shards_tools import _examples
from tests.pipelines.test_train_validation import _split_pairs
from tests.trunks import tiny_bert

CFG = dict(epochs=1, batch_size=16, lr=5e-3, warmup_steps=1, checkpoint_every=1000)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("trunktrain")
    examples = _examples(str(base / "examples"))
    pairs = _split_pairs(str(base / "pairs"), examples)
    shards = run_shard(pairs, str(base / "shards"), rows_per_shard=32)["uri"]
    # seeded apart from the trainer (seed 0): a random init is not the folder's weights
    return tiny_bert(base / "bert", seed=123), shards, examples, base


def _files(uri: str) -> list[str]:
    d, m = mf.resolve_input(uri)
    return m.files(d, "shards")


def test_the_collate_retokenizes_items_with_the_trunks_tokenizer(setup):
    trunk, shards, _, _ = setup
    _, tokenizer_json, _, _ = inspect_trunk(trunk)
    d, manifest = mf.resolve_input(shards)
    cfg = TrainConfig(trunk=trunk, **CFG)
    enc, spec = on_trunk(cfg, spec_of(manifest), encoder_for(spec_of(manifest), cfg), d,
                         manifest)
    assert spec.tokenizer_json == tokenizer_json
    # 256 positions - 64 text - [CLS], [SEP] - 64 audio leave 31 frames of 4 patches
    assert enc.max_frames == 31
    table = pq.read_table(_files(shards)[0]).slice(0, 4)
    rows = table.to_pylist()
    assert all(r["query"]["text"] and r["query"]["instruction"] == "t |" for r in rows)
    prep = shard_item_prep(spec, enc)
    tok = TextTokenizer.from_json(tokenizer_json)
    for r in rows:  # the instruction, then the query text, in the trunk's ids
        item = prep(r["query"])
        assert item["tokens"] == tok.encode("t |", 64) + tok.encode(r["query"]["text"], 64)
        assert item["instruction_tokens"] == 2
    batch = TrainCollate(enc, 0, prep)(table)
    ids = next(inputs for _, inputs in batch.queries)["tokens"]
    assert ids.max() < enc.vocab_size and (ids[:, :2] == torch.tensor(
        tok.encode("t |", 4))).all()


def test_train_on_a_trunk_starts_from_it_and_records_it(setup, tmp_path, ray_session):
    trunk, shards, examples, _ = setup
    out = run_train(shards, str(tmp_path / "ck"), TrainStage.PFT,
                    TrainConfig(trunk=trunk, **CFG))
    assert out["counts"]["steps"] == 6
    loaded = load_checkpoint(str(tmp_path / "ck"), out["checkpoint"])
    enc, spec = loaded.encoder_config, loaded.spec
    _, tokenizer_json, _, _ = inspect_trunk(trunk)
    assert enc.trunk == trunk and enc.dim == 32 and enc.embed_dims == (8, 16, 32)
    assert spec.tokenizer_json == tokenizer_json
    # started from the folder's weights and moved away from them
    pretrained = build_encoder(enc, pretrained=True).state_dict()
    trained = loaded.model.state_dict()
    emb = "trunk.embeddings.word_embeddings.weight"
    assert not torch.equal(trained[emb], pretrained[emb])
    random = build_encoder(enc).state_dict()  # another random init is farther away
    key = "trunk.encoder.layer.0.attention.self.query.weight"
    assert ((trained[key] - pretrained[key]).norm() < (random[key] - pretrained[key]).norm())
    # the model seam reads Examples with the trunk's tokenizer
    handler = EncoderHandler(str(tmp_path / "ck"), out["checkpoint"])
    text = mf.read_table(examples, mf.resolve_input(examples)[1], "examples").to_pylist()[0]
    item = handler.inputs().example(text)
    tok = TextTokenizer.from_json(tokenizer_json)
    assert item["tokens"] == tok.encode(text["parts"][0]["text"], 64)
    vec = handler.embed([item], handler.load())
    assert vec.shape == (1, 32) and np.isclose(np.linalg.norm(vec), 1.0)


def test_bad_trunks_and_old_shards_exit_2(setup, tmp_path):
    trunk, shards, _, base = setup
    with pytest.raises(BadInput, match="no config.json"):
        run_train(shards, str(tmp_path / "ck"), TrainStage.PFT,
                  TrainConfig(trunk=f"hf:{tmp_path}/none", **CFG))
    d, _ = mf.resolve_input(shards)
    old = base / "old-shards"
    import shutil

    shutil.copytree(d, old / pathlib.Path(d).name)
    manifest = old / pathlib.Path(d).name / mf.MANIFEST
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"schema_version": 2}))
    with pytest.raises(BadInput, match="reshard"):
        run_train(str(old), str(tmp_path / "ck"), TrainStage.PFT,
                  TrainConfig(trunk=trunk, **CFG))
    cli = subprocess.run([sys.executable, "-m", "loom.jobs.cli", "train", "--shards", shards,
                          "--trunk", "hf:/nonexistent/folder", "--output",
                          str(tmp_path / "ck")], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert "no config.json" in cli.stderr + cli.stdout
