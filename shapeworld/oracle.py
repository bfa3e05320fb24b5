"""Read an image back into shapes: which colour, which shape, where; judge it against a caption.

Deterministic and model-free. Each pixel takes the nearest palette colour (or background, or
`unknown` when nothing is near); same-colour 4-connected regions of at least MIN_AREA pixels
are objects. A region's shape comes from its bounding box: a triangle's row at a quarter of the
height is much narrower than its row at three quarters; a square fills its box, a circle
about pi/4 of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shapeworld.captions import Spec, parse
from shapeworld.world import BACKGROUND, PALETTE, SIZE, relation_between

MIN_AREA = 12  # pixels at SIZE x SIZE; smaller regions are noise (the smallest shape has ~36)
MAX_COLOUR_DISTANCE = 110.0  # RGB distance beyond which a pixel is nobody's colour
SQUARE_FILL = 0.9  # a square fills at least this much of its box; a circle about 0.78
TRIANGLE_TAPER = 0.6  # quarter-height row / three-quarter row; a triangle's is about 0.33

_NAMES = ["background", *PALETTE]
_COLOURS = np.array([BACKGROUND, *PALETTE.values()], dtype=np.float32)


@dataclass(frozen=True)
class Seen:
    colour: str
    shape: str
    centre: tuple[float, float]
    area: int


@dataclass(frozen=True)
class Verdict:
    match: bool
    reason: str  # "match", or what was wrong


def colour_map(image: Image.Image) -> np.ndarray:
    """Per pixel: index into _NAMES, or -1 for unknown."""
    img = image.convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    pixels = np.asarray(img, dtype=np.float32)
    dist = np.linalg.norm(pixels[:, :, None, :] - _COLOURS[None, None], axis=-1)
    labels = dist.argmin(axis=-1)
    labels[dist.min(axis=-1) > MAX_COLOUR_DISTANCE] = -1
    return labels


def _regions(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected regions of a boolean mask, each as an (n, 2) array of (row, col)."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    h, w = mask.shape
    for r0, c0 in zip(*np.nonzero(mask), strict=True):
        if seen[r0, c0]:
            continue
        stack, cells = [(int(r0), int(c0))], []
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            cells.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < h and 0 <= nc < w and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    stack.append((nr, nc))
        regions.append(np.array(cells))
    return regions


def classify(cells: np.ndarray) -> str:
    rows, cols = cells[:, 0], cells[:, 1]
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height, width = bottom - top + 1, right - left + 1
    fill = len(cells) / (height * width)
    quarter = int(np.count_nonzero(rows == top + round((height - 1) * 0.25)))
    three_quarters = int(np.count_nonzero(rows == top + round((height - 1) * 0.75)))
    if quarter < TRIANGLE_TAPER * max(three_quarters, 1):
        return "triangle"
    return "square" if fill >= SQUARE_FILL else "circle"


def read(image: Image.Image) -> list[Seen]:
    """The objects in an image, largest first."""
    labels = colour_map(image)
    found = []
    for index, name in enumerate(_NAMES):
        if name == "background":
            continue
        for cells in _regions(labels == index):
            if len(cells) < MIN_AREA:
                continue
            rows, cols = cells[:, 0], cells[:, 1]
            centre = ((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2)
            found.append(Seen(name, classify(cells), centre, len(cells)))
    return sorted(found, key=lambda s: -s.area)


def judge_spec(spec: Spec, image: Image.Image) -> Verdict:
    seen = read(image)
    wanted = list(spec.objects)
    got = [(s.colour, s.shape) for s in seen]
    if sorted(got) != sorted(wanted):
        described = ", ".join(f"{c} {s}" for c, s in got) or "nothing"
        return Verdict(False, f"saw {described}")
    if spec.relation is None:
        return Verdict(True, "match")
    first = next(s for s in seen if (s.colour, s.shape) == wanted[0])
    second = next(s for s in seen if (s.colour, s.shape) == wanted[1] and s is not first)
    actual = relation_between(first.centre, second.centre)
    if actual != spec.relation:
        return Verdict(False, f"right objects, but the first is {actual} the second")
    return Verdict(True, "match")


def judge(caption: str, image: Image.Image) -> Verdict:
    """Does the image show exactly what the caption says: the objects (colour bound to shape),
    nothing else, and the relation?"""
    spec = parse(caption)
    if spec is None:
        raise ValueError(f"caption is not in the shapes world's language: {caption!r}")
    return judge_spec(spec, image)
