"""Which two-object scenes training never sees, and the fixed evaluation prompts.

A two-object scene type is a pair of (colour, shape) objects and how the first relates to the
second, counted once for both ways of saying it ("A above B" is "B below A"). HELD_OUT of them
are kept out of every training set, so the two-object evaluation asks for combinations the
models have never been shown. The world has only 18 one-object captions; those are held out
only in the sense that evaluation uses seeds training never drew.
"""

from __future__ import annotations

import itertools
import random

from shapeworld.captions import Spec, caption_for
from shapeworld.world import COLOURS, OPPOSITE, RELATIONS, SHAPES

HELD_OUT_COUNT = 40
EVAL_SEED = 2026


def scene_type(spec: Spec) -> tuple[tuple[str, str], tuple[str, str], str]:
    """A two-object spec in its canonical direction (first object sorted first)."""
    (a, b), rel = spec.objects, spec.relation
    assert rel is not None and len(spec.objects) == 2
    return (a, b, rel) if a <= b else (b, a, OPPOSITE[rel])


def _all_two_object_types() -> list[tuple[tuple[str, str], tuple[str, str], str]]:
    objects = [(c, s) for c in COLOURS for s in SHAPES]
    types: list[tuple[tuple[str, str], tuple[str, str], str]] = []
    for a, b in itertools.combinations(sorted(objects), 2):
        if a[0] != b[0]:
            types.extend((a, b, rel) for rel in RELATIONS)
    return types


ALL_TWO_OBJECT_TYPES = _all_two_object_types()
HELD_OUT = frozenset(random.Random(EVAL_SEED).sample(ALL_TWO_OBJECT_TYPES, HELD_OUT_COUNT))


def is_held_out(spec: Spec) -> bool:
    return len(spec.objects) == 2 and scene_type(spec) in HELD_OUT


def eval_prompts() -> tuple[list[str], list[str]]:
    """(one-object, two-object) prompts: each one-object caption twice, each held-out type
    once, said in a direction chosen by a fixed seed."""
    one = [f"a {c} {s}" for c in COLOURS for s in SHAPES] * 2
    rng = random.Random(EVAL_SEED + 1)
    two = []
    for a, b, rel in sorted(HELD_OUT):
        spec = Spec((a, b), rel) if rng.random() < 0.5 else Spec((b, a), OPPOSITE[rel])
        two.append(caption_for(spec))
    return one, two
