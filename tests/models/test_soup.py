"""Model soups: averaging is exact, incompatible inputs fail loudly, inputs stay untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from loom.models.checkpoint import load_checkpoint, resolve, save_checkpoint
from loom.models.embed import embed_items
from loom.models.encoder import EncoderConfig, MultimodalEncoder
from loom.models.soup import average_state_dicts
from loom.pipelines.common import BadInput
from loom.pipelines.soup import run_soup
from loom.schemas.spec import PreprocessingSpec
from safetensors.torch import load_file

CFG = EncoderConfig(vocab_size=50, max_text_tokens=8, image_size=16, patch_size=8, dim=16,
                    layers=1, heads=2, embed_dims=(8, 16))
SPEC = PreprocessingSpec(image_size=16, patch_size=8, max_text_tokens=8, vocab_size=64)


def _ckpt(root, run: str, seed: int, step: int, cfg: EncoderConfig = CFG,
          spec: PreprocessingSpec = SPEC) -> str:
    torch.manual_seed(seed)
    model = MultimodalEncoder(cfg)
    return save_checkpoint(str(root), run, step, model, None, spec, cfg, {"seed": seed},
                           {"step": step})


def _weights(root, ckpt_id: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / ckpt_id / "model.safetensors"))


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "ckpts"
    ids = [_ckpt(root, "run-a", 0, 5), _ckpt(root, "run-b", 1, 9), _ckpt(root, "run-c", 2, 3)]
    return root, ids


def _items() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {"id": "t", "tokens": [3, 4, 5, 6], "pixels": None, "frames": 0},
        {"id": "i", "tokens": [], "frames": 1,
         "pixels": rng.integers(0, 255, (1, 16, 16, 3), dtype=np.uint8).tobytes()},
    ]


def test_uniform_soup_is_the_mean_and_leaves_inputs_alone(runs, tmp_path):
    root, ids = runs
    latest_before = {r: (root / r / "latest.json").read_bytes() for r in ("run-a", "run-b", "run-c")}
    out = run_soup(["run-a", "run-b", ids[2]], str(root), str(tmp_path / "soups"))
    assert out["stage"] == "soup" and out["version"].startswith("soup-")
    assert out["reused"] is False and out["counts"] == {"inputs": 3}
    assert out["checkpoint"] == f"{out['version']}/step-0000009"  # the max input step
    assert out["checkpoint_root"] == str(tmp_path / "soups")
    assert out["datasets"]["checkpoint"] == str(tmp_path / "soups" / out["checkpoint"])
    inputs = [_weights(root, i) for i in ids]
    soup = _weights(tmp_path / "soups", out["checkpoint"])
    assert set(soup) == set(inputs[0])
    for k, v in soup.items():
        assert torch.allclose(v, torch.stack([sd[k] for sd in inputs]).mean(0), atol=1e-6), k
    loaded = load_checkpoint(out["checkpoint_root"], out["checkpoint"])
    assert loaded.encoder_config == CFG and loaded.spec == SPEC
    assert loaded.state["complete"] is True and loaded.state["data_position"] == {}
    assert loaded.train_config == {"soup_of": ids, "weights": pytest.approx([1 / 3] * 3)}
    assert not (tmp_path / "soups" / out["checkpoint"] / "optimizer.pt").exists()
    for r, before in latest_before.items():
        assert (root / r / "latest.json").read_bytes() == before, r

    again = run_soup([ids[0], "run-b", "run-c"], str(root), str(tmp_path / "soups"))
    assert again["reused"] is True
    assert {k: again[k] for k in out} == out | {"reused": True}
    assert (tmp_path / "soups" / out["checkpoint"] / "model.safetensors").stat().st_mtime_ns \
        == (tmp_path / "soups" / again["checkpoint"] / "model.safetensors").stat().st_mtime_ns

    soup_emb = embed_items(loaded.model, _items())
    for i in ids:
        emb = embed_items(load_checkpoint(str(root), i).model, _items())
        assert not np.allclose(soup_emb, emb, atol=1e-3), i


def test_weighted_soup_and_default_output_root(runs):
    root, ids = runs
    latest_a = (root / "run-a" / "latest.json").read_bytes()
    out = run_soup(ids[:2], str(root), weights=[3, 1])
    assert out["checkpoint_root"] == str(root)
    a, b = _weights(root, ids[0]), _weights(root, ids[1])
    soup = _weights(root, out["checkpoint"])
    for k, v in soup.items():
        assert torch.allclose(v, 0.75 * a[k] + 0.25 * b[k], atol=1e-6), k
    assert load_checkpoint(str(root), out["checkpoint"]).train_config["weights"] == [0.75, 0.25]
    assert (root / "run-a" / "latest.json").read_bytes() == latest_a
    # Other weights or inputs are another soup; normalized-equal weights are the same one.
    assert run_soup(ids[:2], str(root), weights=[1, 1])["version"] != out["version"]
    assert run_soup(ids[:2], str(root), weights=[0.75, 0.25])["reused"] is True


def test_soup_of_one_checkpoint_equals_it(runs, tmp_path):
    root, ids = runs
    out = run_soup(["run-b"], str(root), str(tmp_path / "one"))
    original, soup = _weights(root, ids[1]), _weights(tmp_path / "one", out["checkpoint"])
    assert all(torch.equal(soup[k], original[k]) for k in original)


def test_incompatible_inputs_are_bad_input(runs, tmp_path):
    root, ids = runs
    _ckpt(root, "wide", 3, 1, cfg=CFG.model_copy(update={"dim": 32}))
    _ckpt(root, "other-spec", 4, 1, spec=SPEC.model_copy(update={"max_text_chars": 100}))
    out = str(tmp_path / "out")
    with pytest.raises(BadInput, match="encoder configs differ.*dim"):
        run_soup(["run-a", "wide"], str(root), out)
    with pytest.raises(BadInput, match="preprocessing specs differ.*max_text_chars"):
        run_soup(["run-a", "other-spec"], str(root), out)
    with pytest.raises(BadInput, match="no-such-run"):
        run_soup(["run-a", "no-such-run"], str(root), out)
    with pytest.raises(BadInput, match="weights"):
        run_soup(["run-a", "run-b"], str(root), out, weights=[1.0])
    assert not (tmp_path / "out").exists()


def test_latest_resolves_once(runs, tmp_path):
    root, ids = runs
    out = run_soup(["latest", "run-a"], str(root), str(tmp_path / "s"))
    cfg = load_checkpoint(out["checkpoint_root"], out["checkpoint"]).train_config
    assert cfg["soup_of"] == [resolve(str(root), "latest"), ids[0]]


def test_average_state_dicts_checks_keys_shapes_and_keeps_int_buffers():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3), "m": torch.tensor([True, False])}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(7), "m": torch.tensor([False, True])}
    avg = average_state_dicts([a, b], None)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["n"].item() == 3 and avg["m"].tolist() == [True, False]
    assert torch.allclose(average_state_dicts([a, b], [1, 3])["w"], torch.tensor([2.5, 5.0]))
    half = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16), "n": a["n"], "m": a["m"]}
    assert average_state_dicts([half, half])["w"].dtype == torch.float16
    with pytest.raises(ValueError, match="'w'.*shape"):
        average_state_dicts([a, b | {"w": torch.zeros(3)}])
    with pytest.raises(ValueError, match="lacks key 'n'"):
        average_state_dicts([a, {"w": b["w"], "m": b["m"]}])
    with pytest.raises(ValueError, match="unexpected key 'x'"):
        average_state_dicts([a, b | {"x": torch.zeros(1)}])
    with pytest.raises(ValueError):
        average_state_dicts([])
    with pytest.raises(ValueError):
        average_state_dicts([a, b], [0, 0])


def test_soup_on_gcs(gcs):
    import uuid

    root = f"gs://{gcs.bucket}/soup-{uuid.uuid4().hex[:8]}"
    ids = [_ckpt(root, "run-a", 0, 2), _ckpt(root, "run-b", 1, 4)]
    out = run_soup(["run-a", "run-b"], root, f"{root}/soups")
    assert out["checkpoint"].endswith("step-0000004") and out["reused"] is False
    loaded = load_checkpoint(out["checkpoint_root"], out["checkpoint"])
    a, b = (load_checkpoint(root, i).model.state_dict() for i in ids)
    for k, v in loaded.model.state_dict().items():
        assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-6), k
    assert run_soup(ids, root, f"{root}/soups")["reused"] is True
