"""The demo's compositional world: one shape with a color, a size and a position.

Hard negatives matter here: a "small red circle top left" and a "small red square top
left" differ in one attribute only. Images and texts are rendered from a Scene; the
encoder sees only pixels and words, never the Scene itself.
"""

from __future__ import annotations

import dataclasses
import io
import random

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "cyan": (40, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.16, "medium": 0.26, "large": 0.38}  # radius as a fraction of the side
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
BACKGROUND = (235, 235, 230)


@dataclasses.dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    row: str
    col: str

    @property
    def key(self) -> str:
        return f"{self.size}-{self.color}-{self.shape}-{self.row}-{self.col}"

    @property
    def position(self) -> str:
        if self.row == "middle" and self.col == "center":
            return "center"
        return f"{self.row} {self.col}".replace("middle ", "").replace(" center", "")


def random_scene(rng: random.Random) -> Scene:
    return Scene(
        shape=rng.choice(SHAPES),
        color=rng.choice(sorted(COLORS)),
        size=rng.choice(list(SIZES)),
        row=rng.choice(ROWS),
        col=rng.choice(COLS),
    )


def _canvas(rng: random.Random, side: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A jittered light background with a few gray specks, so no two renders match."""
    bg = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in BACKGROUND)
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 6)):
        x, y = rng.randrange(side), rng.randrange(side)
        shade = rng.randint(150, 210)
        draw.point((x, y), fill=(shade, shade, shade))
    return img, draw


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, ...]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "ring":  # hollow: the reader finds no ink at its centre
        draw.ellipse(box, outline=fill, width=max(2, round(0.4 * r)))
    elif shape == "bar":  # 2:1, lying flat
        draw.rectangle((cx - r, cy - r / 2, cx + r, cy + r / 2), fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def render_image(scene: Scene, rng: random.Random, side: int = 96, fmt: str = "PNG") -> bytes:
    """The scene as image bytes, with jitter in position, tint and noise dots."""
    img, draw = _canvas(rng, side)
    r = SIZES[scene.size] * side / 2
    cx = (COLS.index(scene.col) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
    cy = (ROWS.index(scene.row) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
    fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLORS[scene.color])
    _draw_shape(draw, scene.shape, cx, cy, r, fill)
    return _encode(img, fmt)


_TEMPLATES = (
    "A {size} {color} {shape} sits in the {position} of the frame.",
    "In the {position} area there is a {size} {shape}, colored {color}.",
    "The picture shows one {color} {shape}; it is {size} and placed {position}.",
    "Look {position}: a {shape} of {size} size, painted {color}.",
)
_FILLER = (
    "The background is a plain light gray.",
    "Nothing else appears in the scene.",
    "The edges are crisp and the lighting is flat.",
    "It was drawn with a simple vector tool.",
    "A few faint gray specks dot the canvas.",
)


def describe(scene: Scene, rng: random.Random) -> str:
    """A passage about the scene: one attribute sentence among filler sentences."""
    core = rng.choice(_TEMPLATES).format(
        size=scene.size, color=scene.color, shape=scene.shape, position=scene.position
    )
    filler = rng.sample(_FILLER, k=rng.randint(1, 3))
    sentences = filler[:1] + [core] + filler[1:]
    return " ".join(sentences)


# The rich world: one or two objects, more colors and shapes, and near-miss families.
RICH_COLORS: dict[str, tuple[int, int, int]] = {
    **COLORS,
    "pink": (240, 130, 190),
    "brown": (130, 80, 30),
    "teal": (20, 130, 130),
    "lime": (150, 230, 50),
}
RICH_SHAPES = (*SHAPES, "ring", "bar")
CELLS = tuple((row, col) for row in ROWS for col in COLS)  # reading order


def _cell(obj: Scene) -> tuple[int, int]:
    return ROWS.index(obj.row), COLS.index(obj.col)


def fits(a: Scene, b: Scene) -> bool:
    """Two objects cannot touch: neighbouring cells only hold two small-ish ones."""
    (ra, ca), (rb, cb) = _cell(a), _cell(b)
    if (ra, ca) == (rb, cb) or a.color == b.color:
        return False
    return max(abs(ra - rb), abs(ca - cb)) >= 2 or SIZES[a.size] + SIZES[b.size] < 0.43


@dataclasses.dataclass(frozen=True)
class RichScene:
    """One or two objects (each a Scene), kept in reading order of their cells."""

    objects: tuple[Scene, ...]

    def __post_init__(self) -> None:
        objs = tuple(sorted(self.objects, key=_cell))
        if not 1 <= len(objs) <= 2 or (len(objs) == 2 and not fits(*objs)):
            raise ValueError(f"not a valid rich scene: {objs}")
        object.__setattr__(self, "objects", objs)

    @property
    def key(self) -> str:
        return "rich:" + "+".join(o.key for o in self.objects)

    @classmethod
    def from_dict(cls, data: dict) -> RichScene:
        return cls(tuple(Scene(**o) for o in data["objects"]))


def _random_object(rng: random.Random) -> Scene:
    row, col = rng.choice(CELLS)
    return Scene(shape=rng.choice(RICH_SHAPES), color=rng.choice(sorted(RICH_COLORS)),
                 size=rng.choice(list(SIZES)), row=row, col=col)


def random_rich_scene(rng: random.Random) -> RichScene:
    """One object about half the time, else two that fit side by side."""
    if rng.random() < 0.5:
        return RichScene((_random_object(rng),))
    while True:  # a large object in the center fits no second one: draw both again
        first, second = _random_object(rng), _random_object(rng)
        if fits(first, second):
            return RichScene((first, second))


def _changed(scene: RichScene, i: int, **change: str) -> RichScene | None:
    objs = list(scene.objects)
    objs[i] = dataclasses.replace(objs[i], **change)
    try:
        return RichScene(tuple(objs))
    except ValueError:
        return None


def _one_off(scene: RichScene, i: int, attr: str) -> list[RichScene]:
    obj = scene.objects[i]
    if attr == "cell":
        options = [{"row": r, "col": c} for r, c in CELLS if (r, c) != (obj.row, obj.col)]
    else:
        names = {"color": sorted(RICH_COLORS), "shape": RICH_SHAPES, "size": list(SIZES)}[attr]
        options = [{attr: v} for v in names if v != getattr(obj, attr)]
    return [s for opt in options if (s := _changed(scene, i, **opt)) is not None]


def _swapped(scene: RichScene, attr: str) -> RichScene | None:
    a, b = scene.objects
    if getattr(a, attr) == getattr(b, attr):
        return None
    return RichScene((dataclasses.replace(a, **{attr: getattr(b, attr)}),
                      dataclasses.replace(b, **{attr: getattr(a, attr)})))


def variants(scene: RichScene, rng: random.Random) -> list[RichScene]:
    """Near misses: one attribute of one object changed (color, shape, size, cell), and
    for two objects the colors or shapes swapped (same words, different binding)."""
    out: list[RichScene] = []
    for attr in ("color", "shape", "size", "cell"):
        options = _one_off(scene, rng.randrange(len(scene.objects)), attr)
        if options:
            out.append(rng.choice(options))
    if len(scene.objects) == 2:
        out += [s for attr in ("color", "shape") if (s := _swapped(scene, attr)) is not None]
    unique = {s.key: s for s in out if s.key != scene.key}
    return list(unique.values())


def render_rich(scene: RichScene, rng: random.Random, side: int = 96, fmt: str = "PNG") -> bytes:
    """Like render_image, for each object; centres are kept inside the frame (no clipping)."""
    img, draw = _canvas(rng, side)
    for obj in scene.objects:
        r = SIZES[obj.size] * side / 2
        lo, hi = r + 2, side - 2 - r
        cx = (COLS.index(obj.col) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
        cy = (ROWS.index(obj.row) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
        fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in RICH_COLORS[obj.color])
        _draw_shape(draw, obj.shape, min(hi, max(lo, cx)), min(hi, max(lo, cy)), r, fill)
    return _encode(img, fmt)


_PAIR_TEMPLATES = (
    "A {s1} {c1} {h1} sits {at1} and a {s2} {c2} {h2} {at2}.",
    "{At1} there is a {s1} {h1}, colored {c1}, next to a {s2} {h2}, colored {c2}, {at2}.",
    "The picture shows a {c1} {h1} of {s1} size {at1}; a {c2} {h2} of {s2} size sits {at2}.",
    "Look closely: a {s1} {c1} {h1} {at1} while a {s2} {c2} {h2} is placed {at2}.",
)
_RICH_FILLER = (*_FILLER, "The figures are flat and evenly lit.", "No text is printed anywhere.")


def _at(obj: Scene) -> str:
    return "in the center" if obj.position == "center" else f"at the {obj.position}"


def describe_rich(scene: RichScene, rng: random.Random) -> str:
    """A passage: filler plus one sentence naming every object with all its attributes."""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        core = rng.choice(_TEMPLATES).format(size=obj.size, color=obj.color, shape=obj.shape,
                                             position=obj.position)
    else:
        a, b = scene.objects if rng.random() < 0.5 else scene.objects[::-1]
        at1 = _at(a)
        core = rng.choice(_PAIR_TEMPLATES).format(
            s1=a.size, c1=a.color, h1=a.shape, at1=at1, At1=at1[0].upper() + at1[1:],
            s2=b.size, c2=b.color, h2=b.shape, at2=_at(b))
    filler = rng.sample(_RICH_FILLER, k=rng.randint(1, 3))
    return " ".join(filler[:1] + [core] + filler[1:])
