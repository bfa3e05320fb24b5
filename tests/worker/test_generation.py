"""The generation and ranking code on the tiny models, in process: seeds, guidance, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worker.families import to_pil
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker, rank


@pytest.fixture(scope="module")
def generator(tiny_models: tuple[Path, Path]) -> Generator:
    return Generator.load(str(tiny_models[0]), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ranker(tiny_models: tuple[Path, Path]) -> ClipRanker:
    return ClipRanker.load(str(tiny_models[1]), device="cpu", dtype=torch.float32)


def req(**kw: object) -> GenerationRequest:
    base: dict[str, object] = dict(
        prompt="a red circle",
        negative_prompt=None,
        width=64,
        height=64,
        steps=3,
        guidance_scale=7.5,
        seeds=(1, 2),
    )
    return GenerationRequest.of(**{**base, **kw})  # type: ignore[arg-type]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def same(a: Image.Image, b: Image.Image) -> bool:
    return bool(np.array_equal(pixels(a), pixels(b)))


def test_images_have_the_asked_size_and_count(generator: Generator) -> None:
    (images,) = generator.generate([req(width=96, height=48, seeds=(1, 2, 3))])
    assert [im.size for im in images] == [(96, 48)] * 3
    assert all(im.mode == "RGB" for im in images)


def test_a_seed_reproduces_its_pixels_and_another_seed_does_not(generator: Generator) -> None:
    (a,) = generator.generate([req(seeds=(5,))])
    (b,) = generator.generate([req(seeds=(5,))])
    (c,) = generator.generate([req(seeds=(6,))])
    assert same(a[0], b[0])
    assert not same(a[0], c[0])


def test_guidance_and_negative_prompt_change_the_image(generator: Generator) -> None:
    (plain,) = generator.generate([req(seeds=(9,), guidance_scale=1.0)])
    (guided,) = generator.generate([req(seeds=(9,), guidance_scale=7.5)])
    (negative,) = generator.generate([req(seeds=(9,), guidance_scale=7.5, negative_prompt="blue")])
    assert not same(plain[0], guided[0])
    assert not same(guided[0], negative[0])


def test_compatible_requests_batch_without_changing_any_image(generator: Generator) -> None:
    r1 = req(prompt="a red circle", seeds=(11, 12))
    r2 = req(prompt="a blue square", negative_prompt="red", seeds=(13,))
    r3 = req(prompt="a green triangle", width=32, seeds=(14,))  # another shape: its own call
    batched = generator.generate([r1, r2, r3])
    alone = [generator.generate([r])[0] for r in (r1, r2, r3)]
    assert [len(x) for x in batched] == [2, 1, 1]
    assert batched[2][0].size == (32, 64)
    for got, want in zip(batched, alone, strict=True):
        for g, w in zip(got, want, strict=True):
            assert np.abs(pixels(g) - pixels(w)).max() <= 1  # batch kernels may round apart


def test_steps_are_reported_one_by_one(generator: Generator) -> None:
    seen: list[tuple[int, int]] = []
    generator.generate([req(steps=4, seeds=(1,))], on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_clip_scores_follow_the_images(generator: Generator, ranker: ClipRanker) -> None:
    (images,) = generator.generate([req(seeds=(1, 2, 3))])
    scores = ranker.score("a red circle", [images[0], images[1], images[2], images[0]])
    assert len(scores) == 4 and all(-100.0 <= s <= 100.0 for s in scores)
    assert scores[0] == pytest.approx(scores[3], abs=1e-4)  # same image, same score
    assert len({round(s, 4) for s in scores[:3]}) == 3
    other = ranker.score("a blue square", images[:1])
    assert other[0] != pytest.approx(scores[0], abs=1e-4)  # the prompt matters


def test_a_batch_of_jobs_is_scored_in_one_call_each_against_its_own_prompt(
    generator: Generator, ranker: ClipRanker
) -> None:
    (images,) = generator.generate([req(seeds=(1, 2, 3, 4))])
    groups = [
        ("a red circle", images[:2]),
        ("a blue square above a long green triangle", images[2:3]),  # longer: padded beside
        ("a red circle", images[3:]),
    ]
    together = ranker.score_groups(groups)
    alone = [ranker.score(prompt, group) for prompt, group in groups]
    assert [len(g) for g in together] == [2, 1, 1]
    for got, want in zip(together, alone, strict=True):
        assert got == pytest.approx(want, abs=1e-3)
    assert together[1][0] != pytest.approx(ranker.score("a red circle", images[2:3])[0], abs=1e-3)


def test_tensor_images_stay_on_the_device_and_encode_to_the_pil_outputs_bytes(
    generator: Generator, ranker: ClipRanker
) -> None:
    r = req(seeds=(21, 22, 23, 24), width=64, height=32)
    (pil,) = generator.generate([r])
    (tensors,) = generator.generate([r], tensors=True)
    assert all(isinstance(t, torch.Tensor) for t in tensors)
    assert {t.device.type for t in tensors} == {generator.device.split(":")[0]}
    assert [tuple(t.shape) for t in tensors] == [(3, 32, 64)] * 4
    assert [to_pil(t).tobytes() for t in tensors] == [p.tobytes() for p in pil]
    # CLIP reads the tensors where they are; only PIL's resampling differs from its processor.
    from_tensors, from_pil = (
        ranker.score(r.params.prompt, tensors),
        ranker.score(r.params.prompt, pil),
    )
    assert from_tensors == pytest.approx(from_pil, abs=1.0)
    assert from_tensors != pytest.approx(ranker.score("a blue square", tensors), abs=1e-3)
    mixed = ranker.score(r.params.prompt, [pil[0], *tensors[1:]])
    assert mixed == pytest.approx(from_tensors, abs=1e-4)


def test_rank_orders_best_first_and_keeps_ties_in_generation_order() -> None:
    assert rank([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]


def test_every_stable_diffusion_scheduler_the_api_offers_is_supported_by_the_pipeline(
    generator: Generator,
) -> None:
    """The k-diffusion schedulers; LCM, TCD and flow-matching ones belong to other families
    (tests/worker/test_families.py checks each family's list runs)."""
    from daikon.capabilities import SCHEDULERS

    others = {"lcm", "tcd", "flow_match_euler", "flow_match_heun", "flow_match_lcm"}
    assert generator.supported_schedulers() == [n for n in SCHEDULERS if n not in others]


def test_a_named_scheduler_changes_sampling_and_is_reproducible(generator: Generator) -> None:
    (default,) = generator.generate([req(seeds=(4,), steps=4)])
    (euler,) = generator.generate([req(seeds=(4,), steps=4, scheduler="euler")])
    (euler_again,) = generator.generate([req(seeds=(4,), steps=4, scheduler="euler")])
    (default_again,) = generator.generate([req(seeds=(4,), steps=4)])
    assert not same(default[0], euler[0])
    assert same(euler[0], euler_again[0])
    assert same(default[0], default_again[0])  # switching back restores the model's own


def test_an_unsupported_scheduler_is_refused_before_any_work(generator: Generator) -> None:
    from daikon.capabilities import UnsupportedParameters

    saved = generator.capabilities
    generator.capabilities = saved.model_copy(update={"schedulers": ["ddim"]})
    try:
        with pytest.raises(UnsupportedParameters, match=r"'euler' cannot run .* ddim") as refused:
            generator.generate([req(scheduler="euler")])
        assert refused.value.code == "unsupported_scheduler"
    finally:
        generator.capabilities = saved


def test_candidates_run_in_chunks_with_the_same_images_and_one_progress_count(
    tiny_models: tuple[Path, Path], generator: Generator
) -> None:
    """Five candidates, at most two per call: three calls, each denoised and decoded on its
    own (a cancel waits for one step of one chunk), the progress counting all their steps, and
    every image the one its seed gives in one call of all five."""
    chunked = Generator(generator.pipe, device="cpu", images_per_call=2)
    seen: list[tuple[int, int]] = []
    (images,) = chunked.generate([req(seeds=(1, 2, 3, 4, 5))], on_step=lambda *s: seen.append(s))
    assert seen == [(k, 9) for k in range(1, 10)]  # 3 calls x 3 steps, never backwards
    (whole,) = Generator(generator.pipe, device="cpu", images_per_call=8).generate(
        [req(seeds=(1, 2, 3, 4, 5))]
    )
    assert len(images) == 5
    for got, want in zip(images, whole, strict=True):
        assert np.abs(pixels(got) - pixels(want)).max() <= 1  # batch kernels may round apart
