"""Right scores or a refusal: a checkpoint from another corpus reads Examples with its own
preprocessing (text re-tokenized with its tokenizer), so eval and mine score exactly as
they would on the same assets ingested with the checkpoint's spec; Examples decoded with
other frame settings are refused (a ValueError: exit 2) naming the mismatch."""

from __future__ import annotations

import pytest
from loom.jobs.corpus import generate_corpus
from loom.models.handler import EncoderHandler
from loom.models.inputs import InputMismatch
from loom.pipelines.evaluate import run_eval
from loom.pipelines.ingest import run_ingest
from loom.pipelines.mine import run_mine
from loom.pipelines.synth import run_synth
from loom.schemas import manifest as mf
from loom.schemas.spec import PreprocessingSpec

from tests.checkpoints import examples_spec, tiny_checkpoint


def _examples(uri: str) -> dict[str, dict]:
    d, m = mf.resolve_input(uri)
    return {e["id"]: e for e in mf.read_table(d, m, "examples").to_pylist()}


def _text_tokens(example: dict) -> list[int]:
    return [t for p in example["parts"] for t in (p["tokens"] or [])]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("foreign")
    generate_corpus(str(base / "a"), 4, 24, seed=31, bad_files=False)
    generate_corpus(str(base / "b"), 6, 24, seed=32, bad_files=False)
    ex_a = run_ingest(str(base / "a" / "media"), str(base / "ex_a"))
    ckpts = str(base / "ckpts")
    spec_a = examples_spec(ex_a["uri"])
    ckpt = tiny_checkpoint(ckpts, "run-a", spec_a)
    # corpus B ingested on its own (its own tokenizer), and with the checkpoint's spec
    ex_b = run_ingest(str(base / "b" / "media"), str(base / "ex_b"))
    ex_ba = run_ingest(str(base / "b" / "media"), str(base / "ex_ba"), spec=spec_a)
    return {"base": base, "ckpts": ckpts, "ckpt": ckpt, "spec_a": spec_a,
            "ex_b": ex_b, "ex_ba": ex_ba,
            "pairs_b": run_synth(ex_b["uri"], str(base / "pairs_b")),
            "pairs_ba": run_synth(ex_ba["uri"], str(base / "pairs_ba"))}


def test_examples_are_retokenized_with_the_checkpoints_tokenizer(env):
    own, theirs = _examples(env["ex_b"]["uri"]), _examples(env["ex_ba"]["uri"])
    assert own.keys() == theirs.keys()
    texts = [i for i, e in own.items() if e["modality"] == "text"]
    # the bug this guards against: stored ids differ between the two tokenizers
    assert any(_text_tokens(own[i]) != _text_tokens(theirs[i]) for i in texts)
    prep = EncoderHandler(env["ckpts"], env["ckpt"]).inputs()
    for i in own:
        assert prep.example(own[i])["tokens"] == _text_tokens(theirs[i]), i


def test_eval_scores_as_on_the_checkpoints_own_ingest(env):
    base, ckpts, ckpt = env["base"], env["ckpts"], env["ckpt"]
    foreign = run_eval(env["pairs_b"]["uri"], ckpt, ckpts, str(base / "eval_b"))
    native = run_eval(env["pairs_ba"]["uri"], ckpt, ckpts, str(base / "eval_ba"))
    assert "text->text" in foreign["eval"]
    assert foreign["eval"] == native["eval"]


@pytest.mark.slow
def test_mine_mines_as_on_the_checkpoints_own_ingest(env, ray_session):
    base, ckpts, ckpt = env["base"], env["ckpts"], env["ckpt"]
    mined = {}
    for name in ("pairs_b", "pairs_ba"):
        out = run_mine(env[name]["uri"], str(base / f"mine_{name}"), ckpt, ckpts)
        d, m = mf.resolve_input(out["uri"])
        mined[name] = sorted(((t["pair_id"], t["positive_score"],
                               [n["id"] for n in t["negatives"]])
                              for t in mf.read_table(d, m, "triples").to_pylist()))
    assert mined["pairs_b"] == mined["pairs_ba"]


def test_other_frame_size_is_refused_naming_it(env):
    small = PreprocessingSpec.model_validate(env["spec_a"].model_dump() | {"image_size": 32})
    ckpt = tiny_checkpoint(env["ckpts"], "run-small", small)
    for run in (lambda: run_eval(env["pairs_b"]["uri"], ckpt, env["ckpts"],
                                 str(env["base"] / "eval_small")),
                lambda: run_mine(env["pairs_b"]["uri"], str(env["base"] / "mine_small"), ckpt,
                                 env["ckpts"])):
        with pytest.raises(InputMismatch, match="image_size 48 .checkpoint: 32"):
            run()
    assert issubclass(InputMismatch, ValueError)  # the CLI's exit 2


def test_a_part_of_another_size_is_refused_without_a_spec_file(env):
    prep = EncoderHandler(env["ckpts"], env["ckpt"]).inputs()
    image = next(e for e in _examples(env["ex_b"]["uri"]).values() if e["modality"] == "image")
    odd = image | {"parts": [p | {"height": 64, "width": 64} for p in image["parts"]]}
    with pytest.raises(InputMismatch, match="64x64 frames"):
        prep.example(odd)
