from __future__ import annotations

import base64
import dataclasses
import json
import random
import re
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
    assert ps.version("caption") == "caption.v2"
    assert ps.version("caption", "audio") == "caption.audio.v1"  # a per-modality file
    assert ps.version("caption", "image") == "caption.v2"  # none: the kind's own
    assert PromptSet.load(["caption"], {"caption": 1}).version("caption") == "caption.v1"
    assert "QUERY_KIND: question" in ps.text("question")
    assert "The content below is an audio clip." in ps.text("caption", "audio")
    assert ps.shape("caption") == "text->example"
    assert PromptSet.load(["describe"]).shape("describe", "video") == "example->text"
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


def _modality_prompts():
    return PromptSet.load(["caption", "describe", "compose", "question"])


def test_video_queries_come_from_its_frames(offline_client):
    """A clip's caption names its final scene and what moved or appeared; two clips of
    different scenes never share a query (no hash, no file name: the frames)."""
    from loom.transforms.scenes_media import render_video

    ps = _modality_prompts()
    rng = random.Random(4)
    a = scenes.RichScene((scenes.Scene("circle", "red", "small", "top", "left"),
                          scenes.Scene("bar", "blue", "medium", "bottom", "right")))
    b = scenes.RichScene((scenes.Scene("ring", "green", "large", "middle", "center"),))
    clip = types.Part.from_bytes(data=render_video(a, rng), mime_type="video/mp4")
    out = generate_pair_json(offline_client, CFG, ps.text("caption", "video"), [clip])
    q = out["queries"][0]
    assert "small red circle sliding in at the top left" in q
    assert "medium blue bar appearing at the bottom right" in q
    assert out["task"] == "Given a caption, retrieve the video it describes."
    other = generate_pair_json(offline_client, CFG, ps.text("caption", "video"),
                               [types.Part.from_bytes(data=render_video(b, rng),
                                                      mime_type="video/mp4")])
    assert "large green ring" in other["queries"][0] and not set(other["queries"]) & set(out["queries"])
    comp = generate_pair_json(offline_client, CFG, ps.text("compose", "video"), [clip])
    assert "a medium blue bar appears at the bottom right" in comp["queries"][0]
    assert "the small red circle slides from the" in comp["queries"][0]
    desc = generate_pair_json(offline_client, CFG, ps.text("describe", "video"), [clip])
    assert desc["queries"][0].startswith("The clip shows a small red circle")
    assert desc["task"] == "Given a video, retrieve the passage that describes it."


def test_unknown_language_falls_back_to_the_documents_own_words(offline_client):
    """A passage the model cannot parse gets keywords in its own language, not an English
    template around nothing ("quick question: is there a ?")."""
    doc = "Небольшой красный круг находится в левом верхнем углу кадра."
    for kind in ("question", "keyword", "caption"):
        out = generate_pair_json(offline_client, CFG, PROMPTS.text(kind, "text"),
                                 [types.Part.from_text(text=doc)])
        assert out["queries"] and all(set(q.split()) <= set(doc.lower().replace(".", "").split())
                                      for q in out["queries"]), out


def test_production_prompts_carry_no_demo_world_words():
    """The prompts are written for real data: no scene vocabulary of the demo world."""
    from loom.synth.prompts import PROMPT_DIR, available

    demo_words = {"size", "color", "colour", "shape", "circle", "square", "triangle", "ring"}
    newest = [PROMPT_DIR / (f"{k}.{m}.v{v[-1]}.txt" if m else f"{k}.v{v[-1]}.txt")
              for (k, m), v in available().items()]
    assert len(newest) >= 7
    for path in newest:
        words = set(re.findall(r"[a-z]+", path.read_text().lower()))
        assert not words & demo_words, (path.name, words & demo_words)
