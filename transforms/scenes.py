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


def render_image(scene: Scene, rng: random.Random, side: int = 96, fmt: str = "PNG") -> bytes:
    """The scene as image bytes, with jitter in position, tint and noise dots."""
    bg = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in BACKGROUND)
    img = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(0, 6)):  # speckle, so no two renders are byte-identical
        x, y = rng.randrange(side), rng.randrange(side)
        shade = rng.randint(150, 210)
        draw.point((x, y), fill=(shade, shade, shade))
    r = SIZES[scene.size] * side / 2
    cx = (COLS.index(scene.col) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
    cy = (ROWS.index(scene.row) + 0.5) * side / 3 + rng.uniform(-0.04, 0.04) * side
    fill = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in COLORS[scene.color])
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


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
