from __future__ import annotations

import base64
import dataclasses
import json
import random
import subprocess
import sys
from urllib.parse import urlparse

import pytest
from google.genai import types

from loom.synth import offline_model
from loom.synth.client import LLMBlocked, LLMConfig, LLMError, generate_pair_json, make_client
from loom.synth.offline_server import start_server
from loom.synth.prompts import PromptSet
from loom.transforms import scenes

CFG = LLMConfig()
PROMPTS = PromptSet.load(["caption", "keyword", "question"])


def _image_part(data: bytes) -> types.Part:
    return types.Part.from_bytes(data=data, mime_type="image/png")


def test_structured_output_parsed(offline_client):
    scene = scenes.Scene("circle", "red", "small", "top", "left")
    out = generate_pair_json(offline_client, CFG, PROMPTS.text("caption"),
                             [_image_part(scenes.render_image(scene, random.Random(0)))])
    assert set(out) - {"usage", "repaired", "model_version", "response_id"} == {"task", "queries"}
    assert isinstance(out["task"], str) and out["task"]
    assert out["queries"][0] == "a small red circle in the top left"
    assert all(isinstance(q, str) and q for q in out["queries"])


def test_image_analysis_recovers_attributes(offline_client):
    rng = random.Random(7)
    sample = [scenes.random_scene(rng) for _ in range(30)]
    exact = 0
    for scene in sample:
        got = offline_model.analyze_image(scenes.render_image(scene, rng))
        exact += all(got[a] == getattr(scene, a) for a in ("size", "color", "shape", "row", "col"))
    assert exact >= 27, exact
    # the same through the real client: keyword query names every attribute
    hits = 0
    for scene in sample[:6]:
        out = generate_pair_json(offline_client, CFG, PROMPTS.text("keyword"),
                                 [_image_part(scenes.render_image(scene, rng))])
        hits += out["queries"][0] == f"{scene.size} {scene.color} {scene.shape} {scene.position}"
    assert hits >= 5


def test_text_keyword_extraction(offline_client):
    rng = random.Random(3)
    for _ in range(5):
        scene = scenes.random_scene(rng)
        doc = scenes.describe(scene, rng)
        out = generate_pair_json(offline_client, CFG, PROMPTS.text("keyword"),
                                 [types.Part.from_text(text=doc)])
        assert out["queries"][0] == f"{scene.size} {scene.color} {scene.shape} {scene.position}"
        q = generate_pair_json(offline_client, CFG, PROMPTS.text("question"),
                               [types.Part.from_text(text=doc)])
        assert q["queries"][0] == f"Where is the {scene.size} {scene.color} {scene.shape} described?"
    out = generate_pair_json(offline_client, CFG, PROMPTS.text("keyword"),
                             [types.Part.from_text(text="Quarterly revenue grew beyond expectations.")])
    assert out["queries"][0] == "expectations quarterly revenue beyond"


def test_deterministic(offline_client):
    part = [_image_part(scenes.render_image(scenes.Scene("square", "blue", "large", "bottom",
                                                         "right"), random.Random(1)))]
    a = generate_pair_json(offline_client, CFG, PROMPTS.text("question"), part)
    b = generate_pair_json(offline_client, CFG, PROMPTS.text("question"), part)
    assert a == b
    variants = {tuple(generate_pair_json(offline_client, CFG.model_copy(update={"seed": s}),
                                         PROMPTS.text("keyword"), part)["queries"])
                for s in range(12)}
    assert len(variants) > 1  # the seed drives paraphrase variety


def test_blocked_and_bad_input(offline_client):
    with pytest.raises(LLMBlocked):
        generate_pair_json(offline_client, CFG, PROMPTS.text("caption"), [])
    with pytest.raises(LLMError, match="400"):
        generate_pair_json(offline_client, CFG, PROMPTS.text("caption"), [_image_part(b"not a png")])


def test_binds_loopback_only(server_url):
    assert urlparse(server_url).hostname == "127.0.0.1"
    server, url = start_server(0)
    try:
        assert server.server_address[0] == "127.0.0.1"
        client = make_client(CFG, base_url=url)
        out = generate_pair_json(client, CFG, PROMPTS.text("keyword"),
                                 [types.Part.from_text(text="a large green square")])
        assert out["queries"][0] == "large green square"
    finally:
        server.shutdown()
        server.server_close()


def test_env_key_never_switches_backend(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "planted-key")
    with pytest.raises(ValueError, match="base_url"):
        make_client(LLMConfig())
    monkeypatch.delenv("GEMINI_API_KEY")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="GEMINI_API_KEY"):
        make_client(LLMConfig(backend="gemini"))


def test_prompt_set():
    ps = PromptSet.load(["caption", "question"])
    assert ps.version("caption") == "caption.v1"
    assert "QUERY_KIND: question" in ps.text("question")
    assert ps.digest() == PromptSet.load(["question", "caption"]).digest()
    with pytest.raises(KeyError):
        PromptSet.load(["nope"])


def test_synth_imports_no_engine():
    code = ("import sys, synth.stage, synth.offline_server; "
            "assert not {'apache_beam', 'ray'} & set(sys.modules), 'engine imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rich_image_query_through_server(offline_client):
    """A two-object render through the real client: the answer is what `respond` gives,
    and names every object with its own attributes (a color swap is a wrong answer)."""
    a = scenes.Scene("circle", "red", "small", "top", "left")
    b = scenes.Scene("bar", "blue", "large", "bottom", "right")
    scene = scenes.RichScene((a, b))
    png = scenes.render_rich(scene, random.Random(0))
    out = generate_pair_json(offline_client, CFG, PROMPTS.text("keyword"), [_image_part(png)])
    assert out["queries"][0] == "small red circle top left and large blue bar bottom right"
    request = {"contents": [{"role": "user", "parts": [
        {"text": PROMPTS.text("keyword")},
        {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}}]}],
        "generationConfig": {"responseMimeType": "application/json", "seed": CFG.seed}}
    body = offline_model.respond(request)["candidates"][0]["content"]["parts"][0]["text"]
    assert json.loads(body)["queries"] == out["queries"]
    swapped = scenes.RichScene((dataclasses.replace(a, color="blue"),
                                dataclasses.replace(b, color="red")))
    other = generate_pair_json(offline_client, CFG, PROMPTS.text("caption"),
                               [_image_part(scenes.render_rich(swapped, random.Random(0)))])
    mine = generate_pair_json(offline_client, CFG, PROMPTS.text("caption"), [_image_part(png)])
    assert mine["queries"][0] == ("a small red circle at the top left and "
                                  "a large blue bar at the bottom right")
    assert not set(mine["queries"]) & set(other["queries"])


def test_rich_passage_queries(offline_client):
    rng = random.Random(8)
    for _ in range(6):
        scene = scenes.random_rich_scene(rng)
        doc = scenes.describe_rich(scene, rng)
        out = generate_pair_json(offline_client, CFG, PROMPTS.text("keyword"),
                                 [types.Part.from_text(text=doc)])
        want = " and ".join(f"{o.size} {o.color} {o.shape} {o.position}" for o in scene.objects)
        assert out["queries"][0] == want, doc
