"""Scenes of one or two flat shapes, drawn at SIZE x SIZE, and their captions.

Geometry is defined once here and shared with the oracle: an object's position is the centre
of its bounding box, and the relation between two objects is read along the axis on which their
centres are further apart. The generator only places pairs where that axis is unambiguous.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

SIZE = 32
BACKGROUND = (255, 255, 255)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (245, 215, 0),
    "purple": (145, 50, 200),
    "orange": (255, 135, 0),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
OPPOSITE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}

ONE_OBJECT_SIDES = (10, 18)  # inclusive range of a lone object's side, in pixels
TWO_OBJECT_SIDES = (8, 12)
GAP = 2  # at least this many background pixels between two objects along their axis


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    x: int  # bounding box left
    y: int  # bounding box top
    side: int

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x + (self.side - 1) / 2, self.y + (self.side - 1) / 2)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    relation: str | None = None  # of objects[0] to objects[1]

    def caption(self) -> str:
        return describe([(o.colour, o.shape) for o in self.objects], self.relation)


def describe(objects: Sequence[tuple[str, str]], relation: str | None) -> str:
    """The canonical caption: `a {colour} {shape}[ {relation} a {colour} {shape}]`."""
    parts = [f"a {colour} {shape}" for colour, shape in objects]
    return f" {relation} ".join(parts) if relation else parts[0]


def relation_between(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Where centre `a` is relative to centre `b` (image y grows downwards)."""
    dx, dy = a[0] - b[0], a[1] - b[1]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "left of" if dx < 0 else "right of"


def sample_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A random scene; two objects always differ in colour, so binding is what is tested."""
    if (n_objects or rng.choice((1, 2))) == 1:
        side = rng.randint(*ONE_OBJECT_SIDES)  # drawn first: the training data's seed order
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        return _single(colour, shape, side, rng)
    c0, c1 = rng.sample(COLOURS, 2)
    pair = ((c0, rng.choice(SHAPES)), (c1, rng.choice(SHAPES)))
    return place(pair, rng.choice(RELATIONS), rng)


def place(objects: tuple[tuple[str, str], ...], relation: str | None, rng: random.Random) -> Scene:
    """A random layout of the given (colour, shape) objects in the given relation."""
    if len(objects) == 1:
        (colour, shape), side = objects[0], rng.randint(*ONE_OBJECT_SIDES)
        return _single(colour, shape, side, rng)
    assert relation is not None
    (c0, s0), (c1, s1) = objects
    while True:
        a, b = rng.randint(*TWO_OBJECT_SIDES), rng.randint(*TWO_OBJECT_SIDES)
        first = Obj(c0, s0, rng.randint(1, SIZE - 1 - a), rng.randint(1, SIZE - 1 - a), a)
        second = Obj(c1, s1, rng.randint(1, SIZE - 1 - b), rng.randint(1, SIZE - 1 - b), b)
        if _clear_pair(first, second, relation):
            return Scene((first, second), relation)


def _single(colour: str, shape: str, side: int, rng: random.Random) -> Scene:
    x, y = rng.randint(1, SIZE - 1 - side), rng.randint(1, SIZE - 1 - side)
    return Scene((Obj(colour, shape, x, y, side),))


def _clear_pair(a: Obj, b: Obj, relation: str) -> bool:
    """True when `a` is unambiguously `relation` `b`: separated by GAP along the relation's
    axis, and off that axis by at most half the distance along it."""
    (ax, ay), (bx, by) = a.centre, b.centre
    vertical = relation in ("above", "below")
    along, across = (abs(ay - by), abs(ax - bx)) if vertical else (abs(ax - bx), abs(ay - by))
    if across > along / 2 or relation_between(a.centre, b.centre) != relation:
        return False
    if vertical:
        top, bottom = (a, b) if ay < by else (b, a)
        return top.y + top.side + GAP <= bottom.y
    left, right = (a, b) if ax < bx else (b, a)
    return left.x + left.side + GAP <= right.x


def render(scene: Scene) -> Image.Image:
    """Crisp pixels (no anti-aliasing), so every pixel is the background or a palette colour."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        x0, y0, x1, y1 = o.x, o.y, o.x + o.side - 1, o.y + o.side - 1
        fill = PALETTE[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=fill)
    return image
