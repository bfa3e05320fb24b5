"""Edits judged by the oracle: inpainting one object of a scene, and image-to-image at 0.5.

A fixed held-out set (EDIT_SEED): scenes drawn by the world's own renderer (crisp, so the
oracle reads every input exactly), one object's bounding box (plus a 1-pixel margin) masked,
and a new caption with that object replaced by another colour and shape ("a red circle above
a blue square" -> mask the square -> "a red circle above a yellow triangle"). Every edit runs
through the worker's Generator (mode inpaint: the text model's weights shared with
`from_pipe`, the result pasted over the input outside the mask) with CANDIDATES seeds, ranked
by the worker's ClipRanker against the new caption. The oracle judges the CLIP pick:

- edited object right: exactly one object inside the masked box, of the new colour and shape;
- other object survives (two-object scenes): the untouched object is still seen where it was;
- unmasked area unchanged: every pixel outside the mask byte-identical to the input;
- fully right: the oracle reads the whole new caption (objects, nothing else, the relation)
  and the unmasked area is unchanged.

Image-to-image: the same scenes, redrawn at strength 0.5 from their own caption; the layout
is kept when the oracle reads the same objects (colour and shape) with centres within
LAYOUT_TOLERANCE pixels of where they were.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shapeworld.captions import Spec, caption_for
from shapeworld.oracle import judge, read
from shapeworld.world import COLOURS, SHAPES, SIZE, Obj, Scene, place, render
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker, rank

EDIT_SEED = 4242  # scenes and replacements; training never drew from it
EDITS_TWO = 32
EDITS_ONE = 16
CANDIDATES = 8
STEPS = 20
GUIDANCE = 3.0
INPAINT_STRENGTH = 1.0
IMAGE_STRENGTH = 0.5
MARGIN = 1
LAYOUT_TOLERANCE = 2.0
BASE_SEED = 50_000
GRID_ROWS = 8
ZOOM = 3
SECTION_TITLE = "## Edits: inpainting and image-to-image"


@dataclass(frozen=True)
class Edit:
    scene: Scene
    target: int  # index of the replaced object
    new: tuple[str, str]  # its new (colour, shape)

    @property
    def box(self) -> tuple[int, int, int, int]:
        o = self.scene.objects[self.target]
        return (
            max(o.x - MARGIN, 0),
            max(o.y - MARGIN, 0),
            min(o.x + o.side + MARGIN, SIZE),
            min(o.y + o.side + MARGIN, SIZE),
        )

    def mask(self) -> Image.Image:
        mask = Image.new("L", (SIZE, SIZE), 0)
        x0, y0, x1, y1 = self.box
        mask.paste(255, (x0, y0, x1, y1))
        return mask

    @property
    def caption(self) -> str:
        objects = [(o.colour, o.shape) for o in self.scene.objects]
        objects[self.target] = self.new
        return caption_for(Spec(tuple(objects), self.scene.relation))


def edit_set(seed: int = EDIT_SEED, two: int = EDITS_TWO, one: int = EDITS_ONE) -> list[Edit]:
    """The fixed held-out edits: `two` two-object scenes, then `one` one-object scenes."""
    rng = random.Random(seed)
    edits = []
    for n in [2] * two + [1] * one:
        if n == 2:
            c0, c1 = rng.sample(COLOURS, 2)
            pair = ((c0, rng.choice(SHAPES)), (c1, rng.choice(SHAPES)))
            scene = place(pair, rng.choice(("above", "below", "left of", "right of")), rng)
        else:
            scene = place(((rng.choice(COLOURS), rng.choice(SHAPES)),), None, rng)
        target = rng.randrange(n)
        old = scene.objects[target]
        taken = {o.colour for i, o in enumerate(scene.objects) if i != target}
        colour = rng.choice([c for c in COLOURS if c != old.colour and c not in taken])
        shape = rng.choice([s for s in SHAPES if s != old.shape])
        edits.append(Edit(scene, target, (colour, shape)))
    return edits


def seeds_for(index: int) -> tuple[int, ...]:
    return tuple(BASE_SEED + 100 * index + i for i in range(CANDIDATES))


def _inside(centre: tuple[float, float], box: tuple[int, int, int, int]) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= centre[0] < x1 and y0 <= centre[1] < y1


def _near(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return abs(a[0] - b[0]) <= LAYOUT_TOLERANCE and abs(a[1] - b[1]) <= LAYOUT_TOLERANCE


def _kept(o: Obj, image: Image.Image) -> bool:
    return any(
        (s.colour, s.shape) == (o.colour, o.shape) and _near(s.centre, o.centre)
        for s in read(image)
    )


@dataclass
class EditResult:
    edited_right: bool
    other_survives: bool | None  # None for one-object scenes
    unmasked_identical: bool
    fully_right: bool
    any_fully_right: bool  # of all candidates: the ceiling for ranking


@dataclass
class EditReport:
    inpaint: list[EditResult] = field(default_factory=list)
    unranked_fully_right: list[bool] = field(default_factory=list)
    layout_kept: list[bool] = field(default_factory=list)  # image-to-image, CLIP pick
    layout_unranked: list[bool] = field(default_factory=list)
    grid: list[tuple[Image.Image, Image.Image, Image.Image, str]] = field(default_factory=list)
    inpaint_seconds: float = 0.0
    image_seconds: float = 0.0

    @staticmethod
    def share(values: list[bool]) -> float:
        return sum(values) / len(values) if values else 0.0

    def figures(self) -> dict[str, float]:
        r = self.inpaint
        others = [x.other_survives for x in r if x.other_survives is not None]
        return {
            "edits": len(r),
            "fully_right": self.share([x.fully_right for x in r]),
            "fully_right_unranked": self.share(self.unranked_fully_right),
            "fully_right_any": self.share([x.any_fully_right for x in r]),
            "edited_object_right": self.share([x.edited_right for x in r]),
            "other_object_survives": self.share([bool(x) for x in others]),
            "unmasked_unchanged": self.share([x.unmasked_identical for x in r]),
            "image_layout_kept": self.share(self.layout_kept),
            "image_layout_kept_unranked": self.share(self.layout_unranked),
        }


def judge_edit(edit: Edit, source: Image.Image, result: Image.Image) -> EditResult:
    keep = np.asarray(edit.mask()) == 0
    identical = bool((np.asarray(result)[keep] == np.asarray(source)[keep]).all())
    inside = [s for s in read(result) if _inside(s.centre, edit.box)]
    edited = len(inside) == 1 and (inside[0].colour, inside[0].shape) == edit.new
    other: bool | None = None
    if len(edit.scene.objects) == 2:
        other = _kept(edit.scene.objects[1 - edit.target], result)
    full = identical and judge(edit.caption, result).match
    return EditResult(edited, other, identical, full, full)


def run_edits(
    generator: Generator, ranker: ClipRanker, edits: list[Edit], *, image_mode: bool = True
) -> EditReport:
    report = EditReport()
    for index, edit in enumerate(edits):
        source = render(edit.scene)
        started = time.perf_counter()
        (images,) = generator.generate(
            [
                GenerationRequest.of(
                    edit.caption,
                    seeds_for(index),
                    steps=STEPS,
                    guidance_scale=GUIDANCE,
                    mode="inpaint",
                    image=source,
                    mask=edit.mask(),
                    strength=INPAINT_STRENGTH,
                )
            ]
        )
        report.inpaint_seconds += time.perf_counter() - started
        best = rank(ranker.score(edit.caption, images))[0]
        judged = [judge_edit(edit, source, image) for image in images]
        result = judged[best]
        result.any_fully_right = any(j.fully_right for j in judged)
        report.inpaint.append(result)
        report.unranked_fully_right += [j.fully_right for j in judged]
        if len(report.grid) < GRID_ROWS and index % 4 == 0:
            report.grid.append((source, edit.mask(), images[best], edit.caption))
        if not image_mode:
            continue
        caption = edit.scene.caption()
        started = time.perf_counter()
        (redrawn,) = generator.generate(
            [
                GenerationRequest.of(
                    caption,
                    seeds_for(index),
                    steps=STEPS,
                    guidance_scale=GUIDANCE,
                    mode="image",
                    image=source,
                    strength=IMAGE_STRENGTH,
                )
            ]
        )
        report.image_seconds += time.perf_counter() - started
        kept = [
            all(_kept(o, image) for o in edit.scene.objects)
            and len(read(image)) == len(edit.scene.objects)
            for image in redrawn
        ]
        pick = rank(ranker.score(caption, redrawn))[0]
        report.layout_kept.append(kept[pick])
        report.layout_unranked += kept
    return report


def draw_grid(report: EditReport, path: Path) -> None:
    """Rows: input | mask | CLIP-picked result, with the new caption."""
    cell, pad, label_w, head_h = SIZE * ZOOM, 4, 300, 30
    rows = len(report.grid)
    width = 3 * (cell + pad) + label_w
    height = head_h + rows * (cell + pad)
    grid = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(("input", "mask (white = repaint)", "inpainted (CLIP pick)")):
        draw.text((j * (cell + pad) + 2, 10), title, fill=(0, 0, 0))
    for i, (source, mask, result, caption) in enumerate(report.grid):
        y = head_h + i * (cell + pad)
        for j, image in enumerate((source, mask.convert("RGB"), result)):
            grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (j * (cell + pad), y))
        draw.text((3 * (cell + pad) + 4, y + cell // 2 - 6), caption, fill=(0, 0, 0))
    grid.save(path, optimize=True)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def section(report: EditReport, *, grid_name: str = "quality-edits.png") -> str:
    f = report.figures()
    n, two = int(f["edits"]), sum(1 for x in report.inpaint if x.other_survives is not None)
    targets = [
        (
            "inpaint: at least 80% of edits fully right with CLIP best-of-8",
            pct(f["fully_right"]),
            f["fully_right"] >= 0.80,
        ),
        (
            "inpaint: unmasked area unchanged (byte-identical) in 100% of edits",
            pct(f["unmasked_unchanged"]),
            f["unmasked_unchanged"] == 1.0,
        ),
        (
            "image-to-image at strength 0.5 keeps the layout in at least 90% (CLIP pick)",
            pct(f["image_layout_kept"]),
            f["image_layout_kept"] >= 0.90,
        ),
    ]
    lines = [
        SECTION_TITLE,
        "",
        f"Generated by `make eval-quality` (training/edit_eval.py). {n} held-out edits (seed "
        f"{EDIT_SEED}): {two} two-object and {n - two} one-object scenes drawn by the world's "
        "renderer; one object's box (plus a 1-pixel margin) is masked and the caption asks for "
        "it replaced by another colour and shape (`a red circle above a blue square` -> mask "
        f"the square -> `a red circle above a yellow triangle`). {CANDIDATES} candidates per "
        f"edit, {STEPS} steps, guidance {GUIDANCE:g}, strength {INPAINT_STRENGTH:g}, through the "
        "worker's Generator (mode inpaint: the text model's own UNet through diffusers' "
        "inpainting pipeline, built with `from_pipe`; the result pasted over the input outside "
        "the mask) and ranked by its ClipRanker against the new caption.",
        "",
        "| measure (CLIP pick of 8 unless said) | share |",
        "|---|---:|",
        f"| fully right: the oracle reads the new caption exactly, unmasked area unchanged "
        f"| {pct(f['fully_right'])} |",
        f"| fully right, a random one of the 8 (unranked) | {pct(f['fully_right_unranked'])} |",
        f"| fully right, any of the 8 (the ceiling for ranking) | {pct(f['fully_right_any'])} |",
        f"| edited object right (one object in the box, new colour and shape) "
        f"| {pct(f['edited_object_right'])} |",
        f"| other object survives (two-object scenes: same object within "
        f"{LAYOUT_TOLERANCE:g} px) | {pct(f['other_object_survives'])} |",
        f"| unmasked pixels byte-identical to the input | {pct(f['unmasked_unchanged'])} |",
        f"| image-to-image, strength {IMAGE_STRENGTH:g}: layout kept (same objects within "
        f"{LAYOUT_TOLERANCE:g} px, nothing else) | {pct(f['image_layout_kept'])} |",
        f"| image-to-image, layout kept, unranked | {pct(f['image_layout_kept_unranked'])} |",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in targets],
        "",
        f"Time: {report.inpaint_seconds:.0f} s for the inpaint edits, {report.image_seconds:.0f} s "
        "for the image-to-image ones.",
        "",
        "Rows: input, mask, the CLIP pick; right: the caption asked for.",
        "",
        f"![input, mask, result]({grid_name})",
        "",
    ]
    return "\n".join(lines)
