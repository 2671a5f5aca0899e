"""The rich demo world: valid scenes, near-miss variants, renders that never overlap, and
the offline model reading renders and passages back exactly."""

from __future__ import annotations

import io
import random

import numpy as np
from loom.synth import offline_model
from loom.transforms import scenes
from loom.transforms.scenes import RichScene, Scene
from PIL import Image

ATTRS = ("size", "color", "shape", "row", "col")


def as_objects(attrs: dict) -> list[dict]:
    """Attributes read back, as one dict per object (row/col defaults as in the model)."""
    objs = attrs.get("objects", [attrs])
    return [{a: o.get(a, {"row": "middle", "col": "center"}.get(a)) for a in ATTRS} for o in objs]


def truth(scene: RichScene) -> list[dict]:
    return [{a: getattr(o, a) for a in ATTRS} for o in scene.objects]


def two_object_scenes(rng: random.Random, n: int) -> list[RichScene]:
    out: list[RichScene] = []
    while len(out) < n:
        if len((scene := scenes.random_rich_scene(rng)).objects) == 2:
            out.append(scene)
    return out


def test_palette_is_distinguishable():
    names = sorted(scenes.RICH_COLORS)
    assert len(names) == 12 and len(scenes.RICH_SHAPES) == 6
    pal = np.array([scenes.RICH_COLORS[c] for c in names], dtype=float)
    dist = np.sqrt(((pal[:, None] - pal[None]) ** 2).sum(axis=2))
    assert dist[np.triu_indices(len(names), 1)].min() > 60  # fill jitter moves a pixel <= 26
    for gray in (scenes.BACKGROUND, (150, 150, 150), (210, 210, 210)):
        assert np.sqrt(((pal - np.array(gray)) ** 2).sum(axis=1)).min() > 60


def test_scenes_are_canonical_and_valid():
    rng = random.Random(0)
    drawn = [scenes.random_rich_scene(rng) for _ in range(400)]
    assert 150 < sum(len(s.objects) == 2 for s in drawn) < 250  # about half
    for s in drawn:
        cells = [(scenes.ROWS.index(o.row), scenes.COLS.index(o.col)) for o in s.objects]
        assert cells == sorted(cells) and len(set(cells)) == len(cells)
        assert len({o.color for o in s.objects}) == len(s.objects)
        assert s.key.startswith("rich:") and RichScene.from_dict({"objects": [
            o.__dict__ for o in s.objects[::-1]]}).key == s.key  # order given does not matter
    a = Scene("circle", "red", "small", "top", "left")
    b = Scene("bar", "blue", "large", "bottom", "right")
    assert RichScene((b, a)).key == "rich:small-red-circle-top-left+large-blue-bar-bottom-right"


def fields(obj: Scene) -> tuple:
    return obj.shape, obj.color, obj.size, (obj.row, obj.col)  # a cell is one attribute


def one_attribute_off(base: RichScene, v: RichScene) -> bool:
    """One object has one attribute changed; the others are as they were."""
    for i, obj in enumerate(base.objects):
        rest = set(base.objects[:i] + base.objects[i + 1 :])
        new = [o for o in v.objects if o not in rest]
        if rest <= set(v.objects) and len(new) == 1:
            return sum(x != y for x, y in zip(fields(obj), fields(new[0]), strict=True)) == 1
    return False


def swapped(base: RichScene, v: RichScene) -> bool:
    """Same cells and same bag of words, bound to the objects differently."""
    def bag(s: RichScene) -> list[str]:
        return sorted(w for o in s.objects for w in (o.shape, o.color, o.size))
    return ([(o.row, o.col) for o in base.objects] == [(o.row, o.col) for o in v.objects]
            and bag(base) == bag(v) and base.key != v.key)


def test_variants_differ_minimally():
    rng = random.Random(1)
    for scene in [scenes.random_rich_scene(rng) for _ in range(200)]:
        near = scenes.variants(scene, rng)
        keys = {v.key for v in near}
        assert len(keys) == len(near) >= 3 and scene.key not in keys
        for v in near:
            assert len(v.objects) == len(scene.objects)
            assert one_attribute_off(scene, v) or swapped(scene, v), (scene.key, v.key)
        if len(scene.objects) == 2:
            assert any(swapped(scene, v) for v in near)
    a = Scene("circle", "red", "small", "top", "left")
    b = Scene("bar", "blue", "large", "bottom", "right")
    near = {v.key for v in scenes.variants(RichScene((a, b)), random.Random(2))}
    assert "rich:small-blue-circle-top-left+large-red-bar-bottom-right" in near  # colors swapped
    assert "rich:small-red-bar-top-left+large-blue-circle-bottom-right" in near  # shapes swapped


def test_objects_never_touch():
    rng = random.Random(3)
    for scene in two_object_scenes(rng, 300):
        px = np.asarray(Image.open(io.BytesIO(scenes.render_rich(scene, rng))), dtype=int)
        boxes = []
        for obj in scene.objects:
            near = np.abs(px - np.array(scenes.RICH_COLORS[obj.color])).max(axis=2) <= 15
            ys, xs = np.nonzero(near)
            assert 0 < ys.min() and ys.max() < px.shape[0] - 1  # inside the frame, unclipped
            assert 0 < xs.min() and xs.max() < px.shape[1] - 1
            boxes.append((ys.min(), ys.max(), xs.min(), xs.max()))
        (a0, a1, a2, a3), (b0, b1, b2, b3) = boxes
        apart = a1 + 1 < b0 or b1 + 1 < a0 or a3 + 1 < b2 or b3 + 1 < a2
        assert apart, (scene.key, boxes)  # boxes at least one pixel apart


def test_analyze_image_reads_rich_renders():
    rng = random.Random(4)
    sample = [scenes.random_rich_scene(rng) for _ in range(300)]
    exact = sum(as_objects(offline_model.analyze_image(scenes.render_rich(s, rng))) == truth(s)
                for s in sample)
    print(f"rich image read-back: {exact}/300 = {exact / 300:.1%}")
    assert exact >= 294, exact  # >= 98%


def test_text_attributes_read_rich_passages():
    rng = random.Random(5)
    sample = [scenes.random_rich_scene(rng) for _ in range(300)]
    for s in sample:
        doc = scenes.describe_rich(s, rng)
        assert as_objects(offline_model.extract_text_attributes(doc)) == truth(s), doc
    print("rich passage read-back: 300/300")


def test_near_misses_get_different_queries():
    rng = random.Random(6)
    for scene in two_object_scenes(rng, 40):
        attrs = {"objects": truth(scene)}
        for obj in attrs["objects"]:
            obj["position"] = offline_model.position_phrase(obj["row"], obj["col"])
        mine = {k: offline_model._queries(k, attrs, "image", np.random.default_rng(0), [])[1]
                for k in offline_model.KINDS}
        for v in scenes.variants(scene, rng):
            v_attrs = {"objects": [o | {"position": offline_model.position_phrase(o["row"], o["col"])}
                                   for o in truth(v)]}
            for kind, queries in mine.items():
                theirs = offline_model._queries(kind, v_attrs, "image",
                                                np.random.default_rng(0), [])[1]
                assert not set(queries) & set(theirs), (kind, queries, theirs)
            for q in mine["keyword"] + mine["caption"] + mine["question"]:  # queries parse back
                assert as_objects(offline_model.extract_text_attributes(q)) == truth(scene), q
