"""Completion on the tiny random Janus (32x32 px, a 4x4 grid of tokens, so a token row is 8 px):
a token model's mode inpaint keeps the image's top rows and draws the rest. The kept pixels
come back byte-identical, a seed reproduces its completion, the drawn rows follow the kept
ones, and every mask, size or parameter it could not honour exactly is refused by name."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image

from daikon.capabilities import UnsupportedParameters
from worker.autoregressive import TokenGenerator
from worker.generation import GenerationRequest

SIDE = 32


@pytest.fixture(scope="module")
def janus(load_tiny_janus) -> TokenGenerator:  # type: ignore[no-untyped-def]
    return load_tiny_janus(2)  # type: ignore[no-any-return]


def picture(seed: int = 5, side: int = SIDE) -> Image.Image:
    """Distinct values everywhere, so any change to a kept pixel shows."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


def band(kept: int, side: int = SIDE) -> Image.Image:
    """Black (keep) on the top `kept` rows, white (draw) below."""
    mask = Image.new("L", (side, side), 255)
    mask.paste(0, (0, 0, side, kept))
    return mask


def complete(
    janus: TokenGenerator, seeds: list[int], *, image: Image.Image | None = None, **params: Any
) -> list[np.ndarray]:
    request = GenerationRequest.of(
        "a red circle",
        seeds,
        mode="inpaint",
        image=image or picture(),
        mask=params.pop("mask", band(16)),
        **params,
    )
    return [np.asarray(i) for i in janus.generate([request])[0]]


def test_a_token_model_offers_completion_as_inpaint_and_says_what_it_takes(
    janus: TokenGenerator,
) -> None:
    caps = janus.capabilities
    assert caps.modes == ["text", "inpaint"]
    note = next(n for n in caps.notes if n.startswith("inpaint is completion"))
    assert "32x32" in note and "multiple of 8 px" in note and "4x4 image tokens" in note
    assert any("no image-to-image" in n for n in caps.notes)


@pytest.mark.parametrize("kept", [8, 16, 24])
def test_kept_rows_come_back_byte_identical_and_a_seed_reproduces_its_completion(
    janus: TokenGenerator, kept: int
) -> None:
    source = np.asarray(picture())
    first = complete(janus, [3, 4, 5], mask=band(kept))  # chunks of 2 and 1
    again = complete(janus, [3, 4, 5], mask=band(kept))
    alone = complete(janus, [4], mask=band(kept))
    for image in first:
        assert image.shape == (SIDE, SIDE, 3)
        assert image[:kept].tobytes() == source[:kept].tobytes()
    assert [i.tobytes() for i in again] == [i.tobytes() for i in first]
    assert alone[0].tobytes() == first[1].tobytes()  # seed 4 alone or second in its chunk
    drawn = {i[kept:].tobytes() for i in first}
    assert len(drawn) > 1  # different seeds draw different rows below
    assert all(i[kept:].tobytes() != source[kept:].tobytes() for i in first)


def test_the_drawn_rows_follow_the_kept_ones(janus: TokenGenerator) -> None:
    """The same seed below other top rows draws something else: the kept rows' tokens are
    what the model continues from, not just pixels pasted over a free drawing."""
    one = complete(janus, [9], image=picture(1))[0]
    other = complete(janus, [9], image=picture(2))[0]
    assert one[16:].tobytes() != other[16:].tobytes()


def test_progress_counts_every_token_kept_ones_too(janus: TokenGenerator) -> None:
    seen: list[tuple[int, int]] = []
    request = GenerationRequest.of(
        "a red circle", [1, 2, 3], mode="inpaint", image=picture(), mask=band(16)
    )
    janus.generate([request], on_step=lambda s, t: seen.append((s, t)))
    assert seen == [(s, 32) for s in range(1, 33)]  # 2 chunks x 16 tokens


def gray_band() -> Image.Image:
    mask = band(16)
    mask.paste(128, (0, 20, SIDE, 21))
    return mask


def black_below_white() -> Image.Image:
    mask = band(8)
    mask.paste(0, (0, 24, SIDE, SIDE))
    return mask


def left_half() -> Image.Image:
    mask = Image.new("L", (SIDE, SIDE), 0)
    mask.paste(255, (SIDE // 2, 0, SIDE, SIDE))
    return mask


@pytest.mark.parametrize(
    ("params", "param", "says"),
    [
        (dict(mask=band(12)), "mask", "ends at 12 px"),
        (dict(mask=band(0)), "mask", "keeps no row"),
        (dict(mask=band(SIDE)), "mask", "nothing to complete"),
        (dict(mask=gray_band()), "mask", "pixel row 20 is not all white"),
        (dict(mask=black_below_white()), "mask", "pixel row 24 is not all white"),
        (dict(mask=left_half()), "mask", "pixel row 0 is not all white"),
        (dict(image=picture(side=64), mask=band(16, side=64)), "image", "is 64x64"),
        (dict(strength=0.5), "strength", "strength 0.5 cannot apply"),
        (dict(mask_blur=4), "mask_blur", "a blurred edge (4 px)"),
    ],
)
def test_what_completion_cannot_do_exactly_is_refused_naming_the_parameter(
    janus: TokenGenerator, params: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(UnsupportedParameters) as refused:
        complete(janus, [0], **params)
    (violation,) = refused.value.violations
    assert violation.param == param and violation.code == "unsupported_parameter"
    assert says in violation.message
    assert "model 'tokens' (janus, JanusForConditionalGeneration)" in violation.message


def test_image_to_image_stays_refused_saying_why(janus: TokenGenerator) -> None:
    request = GenerationRequest.of("a red circle", [0], mode="image", image=picture())
    with pytest.raises(UnsupportedParameters, match=r"mode: .* no noise level to redraw"):
        janus.check(request)
