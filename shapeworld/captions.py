"""Caption wording: the variations training sees, and a parser for what people type.

Canonical form: `a red circle` and `a red circle above a blue square`. Accepted variations:
`an` for `a`, `over`/`on top of` for above, `under`/`beneath` for below, `to the left of` /
`on the left of` for `left of` (and right), surrounding punctuation and case.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from shapeworld.world import COLOURS, OPPOSITE, RELATIONS, SHAPES, Scene, describe

PHRASES: dict[str, tuple[str, ...]] = {
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
}
_PHRASE_TO_RELATION = {p: rel for rel, phrases in PHRASES.items() for p in phrases}
_ARTICLE = r"(?:a|an)"
_OBJECT = rf"{_ARTICLE} ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
_PHRASE = "|".join(sorted(_PHRASE_TO_RELATION, key=len, reverse=True))
_CAPTION = re.compile(rf"^{_OBJECT}(?: ({_PHRASE}) {_OBJECT})?$")


@dataclass(frozen=True)
class Spec:
    """What a caption asks for: (colour, shape) pairs and, for two, the first's relation."""

    objects: tuple[tuple[str, str], ...]
    relation: str | None = None


def parse(text: str) -> Spec | None:
    """The scene a caption describes, or None when it is not in the world's language."""
    words = re.sub(r"[^a-z ]+", " ", text.lower()).split()
    m = _CAPTION.match(" ".join(words))
    if m is None:
        return None
    c0, s0, phrase, c1, s1 = m.groups()
    if phrase is None:
        return Spec(((c0, s0),))
    return Spec(((c0, s0), (c1, s1)), _PHRASE_TO_RELATION[phrase])


def spec_of(scene: Scene) -> Spec:
    return Spec(tuple((o.colour, o.shape) for o in scene.objects), scene.relation)


def caption_for(spec: Spec) -> str:
    return describe(spec.objects, spec.relation)


def varied_caption(spec: Spec, rng: random.Random, p_variation: float = 0.3) -> str:
    """A caption for training: canonical most of the time, a variation otherwise; a pair may
    be described from either object ("A above B" is "B below A")."""
    objects, relation = list(spec.objects), spec.relation
    if relation and rng.random() < 0.5:
        objects.reverse()
        relation = OPPOSITE[relation]

    def article(colour: str) -> str:
        return "an" if colour[0] in "aeiou" and rng.random() < p_variation else "a"

    parts = [f"{article(c)} {c} {s}" for c, s in objects]
    if relation is None:
        return parts[0]
    phrase = rng.choice(PHRASES[relation][1:]) if rng.random() < p_variation else relation
    return f"{parts[0]} {phrase} {parts[1]}"


def words() -> list[str]:
    """Every word the world's captions use (the tokenizer's vocabulary)."""
    vocab = {"a", "an", *COLOURS, *SHAPES}
    for phrases in PHRASES.values():
        for p in phrases:
            vocab.update(p.split())
    return sorted(vocab)


assert set(PHRASES) == set(RELATIONS)
