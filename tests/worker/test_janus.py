"""The autoregressive family on a tiny random Janus saved to a folder and loaded the way a
deployment's model is (worker/runtime.py's load_generator): capabilities, per-candidate seeds
whatever the chunk or batch, sampling parameters, refusals, progress over chunks, cancel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daikon.capabilities import ModelOptions, UnsupportedParameters
from worker.autoregressive import TokenGenerator
from worker.families import UnsupportedOption
from worker.generation import GenerationRequest
from worker.runtime import ModelLoadError, load_generator, model_kind


@pytest.fixture(scope="module")
def janus(load_tiny_janus) -> TokenGenerator:  # type: ignore[no-untyped-def]
    return load_tiny_janus(3)  # type: ignore[no-any-return]


def pixels(images: list) -> list[bytes]:  # type: ignore[type-arg]
    return [np.asarray(image).tobytes() for image in images]


def test_a_janus_folder_loads_as_an_autoregressive_model_with_its_fixed_size_and_tokens(
    janus: TokenGenerator, tiny_janus: Path, tiny_models: tuple[Path, Path]
) -> None:
    caps = janus.capabilities
    assert (caps.kind, caps.family, caps.pipeline_class) == (
        "autoregressive",
        "janus",
        "JanusForConditionalGeneration",
    )
    assert (caps.native_width, caps.native_height, caps.image_tokens) == (32, 32, 16)
    assert (caps.min_size, caps.max_size, caps.schedulers) == (32, 32, [])
    assert caps.sampling == ["temperature", "top_p", "top_k_tokens"]
    assert caps.codebook_size == 64 and caps.defaults.guidance_scale == 5.0
    assert model_kind(str(tiny_janus)) == "autoregressive"
    assert model_kind(str(tiny_models[0])) == "diffusion"
    with pytest.raises(ModelLoadError, match="'clip' model, not a diffusers pipeline"):
        model_kind(str(tiny_models[1]))


def test_candidate_i_draws_from_seed_plus_i_alone_in_a_chunk_or_beside_another_job(
    janus: TokenGenerator,
) -> None:
    seven = janus.generate([GenerationRequest.of("a red circle", range(100, 107))])[0]
    assert len(seven) == 7 and seven[0].size == (32, 32)  # chunks of 3, 3 and 1
    alone = janus.generate([GenerationRequest.of("a red circle", [104])])[0]
    assert pixels(alone) == pixels(seven[4:5])
    batched = janus.generate(
        [
            GenerationRequest.of("a blue square", [5, 6]),
            GenerationRequest.of("a red circle", [103, 104]),
        ]
    )
    assert pixels(batched[1]) == pixels(seven[3:5])
    assert len(set(pixels(seven))) > 1  # different seeds, different images
    again = janus.generate([GenerationRequest.of("a red circle", range(100, 107))])[0]
    assert pixels(again) == pixels(seven)


def test_each_sampling_parameter_changes_what_is_drawn(janus: TokenGenerator) -> None:
    def draw(**params: object) -> list[bytes]:
        return pixels(janus.generate([GenerationRequest.of("a red circle", range(6), **params)])[0])

    plain = draw()
    # One token allowed per step: every seed draws the same, most likely image.
    greedy = draw(top_k_tokens=1)
    assert len(set(greedy)) == 1 and greedy != plain
    assert draw(top_p=0.01) == greedy  # the nucleus of the most likely token alone
    assert draw(temperature=0.01) == greedy
    assert draw(temperature=3.0) != plain
    assert draw(guidance_scale=1.0) != plain


def test_what_a_token_model_cannot_do_is_refused_naming_the_parameter_and_the_model(
    janus: TokenGenerator,
) -> None:
    cases = {
        "negative_prompt": dict(negative_prompt="blurry"),
        "width": dict(width=64, height=32),
        "steps": dict(steps=20),
        "scheduler": dict(scheduler="ddim"),
        "top_k_tokens": dict(top_k_tokens=65),
    }
    for param, params in cases.items():
        with pytest.raises(UnsupportedParameters) as refused:
            janus.generate([GenerationRequest.of("a red circle", [0], **params)])
        (violation,) = refused.value.violations
        assert violation.param == param
        assert "model 'tokens' (janus, JanusForConditionalGeneration)" in violation.message
    with pytest.raises(UnsupportedParameters, match=r"steps: .* 16 image tokens one after"):
        janus.check(GenerationRequest.of("p", [0], steps=20))


def test_a_diffusion_model_refuses_the_token_sampling_parameters(
    tiny_models: tuple[Path, Path],
) -> None:
    diffusion = load_generator(str(tiny_models[0]), model="sd", device="cpu")
    for param in ("temperature", "top_p", "top_k_tokens"):
        value = 1 if param == "top_k_tokens" else 0.5
        with pytest.raises(UnsupportedParameters, match=rf"{param}: .* samples no tokens"):
            diffusion.check(GenerationRequest.of("p", [0], **{param: value}))


def test_options_for_diffusion_models_are_refused_at_load(tiny_janus: Path) -> None:
    with pytest.raises(UnsupportedOption, match="vae_tiling, compile: a token model"):
        TokenGenerator.load(
            str(tiny_janus), device="cpu", options=ModelOptions(compile=True, vae_tiling=True)
        )


def test_progress_counts_tokens_over_every_chunk_and_a_raise_stops_the_call(
    janus: TokenGenerator,
) -> None:
    seen: list[tuple[int, int]] = []
    janus.generate(
        [GenerationRequest.of("a red circle", range(5))], on_step=lambda s, t: seen.append((s, t))
    )
    assert seen == [(s, 32) for s in range(1, 33)]  # 2 chunks x 16 tokens, one count

    class Stop(Exception):
        pass

    def cancel(step: int, total: int) -> None:
        if step == 20:  # the 4th token of the second chunk
            raise Stop

    calls: list[int] = []

    def counting(step: int, total: int) -> None:
        calls.append(step)
        cancel(step, total)

    with pytest.raises(Stop):
        janus.generate([GenerationRequest.of("a red circle", range(5))], on_step=counting)
    assert calls[-1] == 20
    # The model still serves the next job, with the same bytes as before.
    assert pixels(janus.generate([GenerationRequest.of("a red circle", [104])])[0]) == pixels(
        janus.generate([GenerationRequest.of("a red circle", range(100, 105))])[0][4:]
    )
