"""The shapes world: the oracle reads generated scenes back exactly, captions parse, the held-out
scene types never reach training, and the tokenizer keeps every word whole."""

from __future__ import annotations

import random

import pytest
from PIL import Image, ImageDraw

from shapeworld.captions import Spec, parse, spec_of, varied_caption
from shapeworld.oracle import judge, read
from shapeworld.prompts import HELD_OUT, HELD_OUT_COUNT, eval_prompts, is_held_out, scene_type
from shapeworld.world import BACKGROUND, PALETTE, SIZE, Obj, Scene, render, sample_scene

HELD_OUT_IMAGES_SEED = 424242  # not a seed training draws from


def test_the_oracle_agrees_with_the_generator_on_held_out_images() -> None:
    rng = random.Random(HELD_OUT_IMAGES_SEED)
    n, agreed = 1500, 0
    for _ in range(n):
        scene = sample_scene(rng)
        image = render(scene)
        labels = sorted((o.colour, o.shape) for o in scene.objects)
        seen = sorted((s.colour, s.shape) for s in read(image))
        agreed += seen == labels and judge(scene.caption(), image).match
    assert agreed / n >= 0.99, f"oracle agreed on {agreed} of {n}"


def test_the_oracle_rejects_swapped_colours_a_turned_relation_and_extra_objects() -> None:
    red_circle = Obj("red", "circle", 10, 2, 11)
    blue_square = Obj("blue", "square", 10, 18, 11)
    image = render(Scene((red_circle, blue_square), "above"))
    assert judge("a red circle above a blue square", image).match
    assert judge("a blue square below a red circle", image).match
    assert judge("A red circle on top of a blue square.", image).match
    swapped = judge("a blue circle above a red square", image)
    assert not swapped.match and "saw" in swapped.reason
    turned = judge("a red circle below a blue square", image)
    assert not turned.match and "above" in turned.reason
    assert not judge("a red circle", image).match  # the square is one object too many
    assert not judge("a red circle above a blue square", Image.new("RGB", (SIZE, SIZE))).match


def test_the_oracle_ignores_specks_and_reads_larger_images() -> None:
    scene = Scene((Obj("green", "triangle", 6, 6, 16),))
    image = render(scene)
    ImageDraw.Draw(image).rectangle((28, 28, 29, 29), fill=PALETTE["purple"])  # 4-pixel speck
    assert [(s.colour, s.shape) for s in read(image)] == [("green", "triangle")]
    assert judge("a green triangle", image.resize((64, 64), Image.Resampling.NEAREST)).match
    assert read(Image.new("RGB", (SIZE, SIZE), BACKGROUND)) == []


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("a red circle", Spec((("red", "circle"),))),
        ("an orange square", Spec((("orange", "square"),))),
        (
            "a blue square above a yellow triangle",
            Spec((("blue", "square"), ("yellow", "triangle")), "above"),
        ),
        (
            "A green circle to the left of a purple square!",
            Spec((("green", "circle"), ("purple", "square")), "left of"),
        ),
        (
            "a red circle under a blue square",
            Spec((("red", "circle"), ("blue", "square")), "below"),
        ),
        ("a purple elephant", None),
        ("a red circle near a blue square", None),
        ("", None),
    ],
)
def test_captions_parse_with_their_variations(text: str, spec: Spec | None) -> None:
    assert parse(text) == spec


def test_training_wording_always_parses_back_to_the_same_scene() -> None:
    rng = random.Random(7)
    for _ in range(500):
        scene = sample_scene(rng)
        spec = parse(varied_caption(spec_of(scene), rng, p_variation=0.8))
        assert spec is not None
        if scene.relation:
            assert scene_type(spec) == scene_type(spec_of(scene))
        else:
            assert spec == spec_of(scene)


def test_held_out_scene_types_never_reach_training_and_are_the_two_object_eval_set() -> None:
    from training.data import training_scene

    assert len(HELD_OUT) == HELD_OUT_COUNT
    rng = random.Random(1)
    assert not any(is_held_out(spec_of(training_scene(rng))) for _ in range(3000))
    one, two = eval_prompts()
    assert len(one) == 36 and len(set(one)) == 18
    specs = [parse(p) for p in two]
    assert all(s is not None and is_held_out(s) for s in specs)
    assert {scene_type(s) for s in specs if s} == set(HELD_OUT)


def test_the_tokenizer_keeps_every_world_word_whole() -> None:
    from shapeworld.captions import words
    from training.tokenizer import MAX_LENGTH, build_tokenizer

    tokenizer = build_tokenizer()
    for word in words():
        ids = tokenizer(word)["input_ids"]
        assert len(ids) == 3, (word, tokenizer.convert_ids_to_tokens(ids))
    longest = "an orange triangle on the right of a yellow triangle"
    assert len(tokenizer(longest)["input_ids"]) <= MAX_LENGTH
