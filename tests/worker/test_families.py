"""Every diffusers family through the adapter, on tiny random-weight builds loaded the way the
worker loads them: each job parameter does what it says for that model or is refused, naming
the parameter and the model."""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from daikon.capabilities import SCHEDULERS, ModelOptions, UnsupportedParameters
from tests.families import (
    FAMILIES,
    Adapters,
    Family,
    FamilyBuilds,
    Progress,
    Stop,
    build_kandinsky22_prior,
    build_sd1,
    size_for,
)
from worker.families import (
    FAMILIES as HANDLED,
)
from worker.families import (
    REFUSED,
    UnsupportedOption,
    UnsupportedPipeline,
    call_parameters,
    to_pil,
)
from worker.generation import GenerationRequest, Generator
from worker.ranking import ClipRanker, rank

pytestmark = pytest.mark.filterwarnings(
    # numpy 2 on diffusers' k-diffusion schedulers (upstream, harmless)
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)

NAMES = list(FAMILIES)
PROMPT = "a red circle above a blue square"


def names(predicate: Callable[[Family], bool]) -> list[str]:
    return [n for n, f in FAMILIES.items() if predicate(f)]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The machine is shared and tiny models gain nothing from a second thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def builds(tmp_path_factory: pytest.TempPathFactory) -> FamilyBuilds:
    return FamilyBuilds(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def adapters(builds: FamilyBuilds) -> Adapters:
    return Adapters(builds)


def request(name: str, **kw: Any) -> GenerationRequest:
    width, height = size_for(FAMILIES[name])
    base: dict[str, Any] = dict(
        prompt=PROMPT,
        negative_prompt=None,
        width=width,
        height=height,
        steps=2,
        guidance_scale=None,
        seeds=(1, 2),
    )
    return GenerationRequest.of(**{**base, **kw})


def one(adapter: Generator, name: str, **kw: Any) -> Image.Image:
    (images,) = adapter.generate([request(name, seeds=(3,), **kw)])
    return images[0]


def same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def levels_apart(a: Image.Image, b: Image.Image) -> tuple[int, float]:
    """The largest per-channel difference and the fraction of values that differ."""
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
    return int(d.max()), float((d > 0).mean())


def denoiser_calls(pipe: Any) -> tuple[Counter[str], Callable[[], None]]:
    """Count forward calls of every denoiser (UNet, transformer, Kandinsky's prior)."""
    calls: Counter[str] = Counter()
    handles = []
    for attr in ("unet", "transformer", "prior_prior"):
        module = getattr(pipe, attr, None)
        if isinstance(module, torch.nn.Module):

            def hook(*_: Any, _attr: str = attr) -> None:
                calls[_attr] += 1

            handles.append(module.register_forward_pre_hook(hook))

    def remove() -> None:
        for h in handles:
            h.remove()

    return calls, remove


@pytest.fixture
def scheduler_steps(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Spy on every scheduler class's `step`: class name -> timesteps length at each call."""
    import diffusers

    calls: dict[str, list[int]] = {}
    for class_name in {*SCHEDULERS.values(), "UnCLIPScheduler"}:
        cls = getattr(diffusers, class_name, None)
        if cls is None or "step" not in vars(cls):
            continue
        original = cls.step

        @functools.wraps(original)
        def step(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            calls.setdefault(type(self).__name__, []).append(len(self.timesteps))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "step", step)
    return calls


# --- loading and capabilities -------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_autopipeline_loads_each_family_and_its_capabilities_say_what_it_is(
    adapters: Adapters, name: str
) -> None:
    family, adapter = FAMILIES[name], adapters(name)
    caps = adapter.capabilities
    assert type(adapter.pipe).__name__ == family.pipeline_class
    assert caps.model == name
    assert caps.pipeline_class == family.pipeline_class
    assert caps.size_multiple == family.multiple
    assert caps.guidance == family.guidance
    assert caps.supports_negative_prompt == family.negative
    assert caps.supports_true_cfg == family.true_cfg
    assert caps.defaults.scheduler in caps.schedulers
    assert caps.check({}) == []  # what an empty request resolves to is servable
    # What the API receives from the heartbeat reads back to the same capabilities.
    assert type(caps).model_validate(caps.model_dump(mode="json")) == caps


def test_defaults_are_the_families_own(adapters: Adapters) -> None:
    def defaults(name: str) -> tuple[int, float, float | None]:
        d = adapters(name).capabilities.defaults
        return d.steps, d.guidance_scale, d.true_cfg_scale

    assert defaults("sd1") == (50, 7.5, None)
    assert defaults("sd3") == (28, 7.0, None)
    assert defaults("flux-dev") == (28, 3.5, 4.0)
    assert defaults("flux-schnell") == (4, 0.0, 4.0)
    assert defaults("sdxl-turbo") == (1, 0.0, None)  # from its model-table options
    assert defaults("lcm") == (4, 8.5, None)
    assert defaults("pixart-sigma") == (20, 4.5, None)
    assert defaults("kandinsky22") == (100, 4.0, None)


def test_an_omitted_parameter_takes_the_models_default(adapters: Adapters) -> None:
    adapter, progress = adapters("sdxl-turbo"), Progress()
    (images,) = adapter.generate([GenerationRequest.of(PROMPT, (1,))], on_step=progress)
    d = adapter.capabilities.defaults
    assert images[0].size == (d.width, d.height) == (64, 64)
    assert progress.assert_complete() == 1


# --- size -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_images_have_exactly_the_size_asked(adapters: Adapters, name: str) -> None:
    width, height = size_for(FAMILIES[name])
    (images,) = adapters(name).generate([request(name, seeds=(1, 2))])
    assert [im.size for im in images] == [(width, height)] * 2
    assert all(im.mode == "RGB" for im in images)


@pytest.mark.parametrize("name", NAMES)
def test_a_size_off_the_multiple_is_refused_before_any_step(adapters: Adapters, name: str) -> None:
    adapter, m = adapters(name), FAMILIES[name].multiple
    progress = Progress()
    with pytest.raises(UnsupportedParameters) as refused:
        adapter.generate([request(name, width=m + m // 2)], on_step=progress)
    assert progress.seen == []
    (violation,) = refused.value.violations
    assert violation.param == "width"
    assert f"not a multiple of {m}" in violation.message
    assert repr(name) in violation.message
    caps = adapter.capabilities
    if caps.max_size is not None:  # SD3's positional grid
        (violation,) = caps.check(request(name, height=caps.max_size + m).params)
        assert violation.param == "height" and str(caps.max_size) in violation.message


# --- progress and cancel -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_progress_counts_every_step_up_to_the_total(adapters: Adapters, name: str) -> None:
    progress = Progress()
    adapters(name).generate([request(name, steps=3)], on_step=progress)
    total = progress.assert_complete()
    if name.startswith("kandinsky"):
        assert total == 2 + 3  # the prior's two steps, then the decoder's three
    elif name == "sd1":
        assert total == 4  # PNDM (SD 1.5's default) takes one step more than asked


@pytest.mark.parametrize(
    ("name", "scheduler", "total"),
    [
        ("sd1", "pndm", 4),
        ("sd1", "heun", 5),  # second-order: 2 x 3 - 1 iterations
        ("sd1", "dpm_2", 5),
        ("sd3", "flow_match_heun", 5),
        ("pixart-sigma", "heun", 3),  # the old-style callback fires once per Heun step
        ("kandinsky22", "dpmpp_2s", 2 + 3),
    ],
)
def test_progress_total_comes_from_the_pipeline_on_multi_order_schedulers(
    adapters: Adapters, name: str, scheduler: str, total: int
) -> None:
    progress = Progress()
    adapters(name).generate([request(name, steps=3, scheduler=scheduler)], on_step=progress)
    assert progress.assert_complete() == total


@pytest.mark.parametrize("name", NAMES)
def test_a_cancel_at_step_2_stops_the_run(adapters: Adapters, name: str) -> None:
    adapter = adapters(name)
    calls, remove = denoiser_calls(adapter.pipe)
    at_stop: list[int] = []

    class CancelAt2(Progress):
        def __call__(self, step: int, total: int) -> None:
            if step == 2:
                at_stop.append(sum(calls.values()))
            super().__call__(step, total)

    progress = CancelAt2(stop_at=2)
    try:
        with pytest.raises(Stop):
            adapter.generate([request(name, steps=4)], on_step=progress)
    finally:
        remove()
    assert [s for s, _ in progress.seen] == [1, 2]
    assert sum(calls.values()) == at_stop[0] > 0  # nothing denoised after the callback raised


@pytest.mark.parametrize("name", ["kandinsky22", "pixart-alpha"])
def test_a_cancel_in_a_later_stage_or_old_style_callback_stops_within_a_step(
    adapters: Adapters, name: str
) -> None:
    adapter = adapters(name)
    calls, remove = denoiser_calls(adapter.pipe)
    progress = Progress(stop_at=3)  # Kandinsky: the decoder's first step
    try:
        with pytest.raises(Stop):
            adapter.generate([request(name, steps=5)], on_step=progress)
    finally:
        remove()
    assert [s for s, _ in progress.seen] == [1, 2, 3]
    denoiser = "unet" if name.startswith("kandinsky") else "transformer"
    assert calls[denoiser] == (1 if name.startswith("kandinsky") else 3)


# --- guidance and negative prompts ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_negative_prompt_changes_the_image_or_is_refused(adapters: Adapters, name: str) -> None:
    adapter = adapters(name)
    if FAMILIES[name].negative:
        plain = one(adapter, name)
        assert not same(plain, one(adapter, name, negative_prompt="green triangles"))
    else:
        (violation,) = adapter.capabilities.check(request(name, negative_prompt="green").params)
        assert violation.param == "negative_prompt" and repr(name) in violation.message
        with pytest.raises(UnsupportedParameters):
            adapter.generate([request(name, negative_prompt="green")])


@pytest.mark.parametrize("name", names(lambda f: f.guidance == "cfg" and f.negative))
def test_a_negative_prompt_needs_the_guidance_that_applies_it(
    adapters: Adapters, name: str
) -> None:
    adapter = adapters(name)
    if name.startswith("kandinsky"):  # the prior's own CFG applies it whatever the decoder's
        plain = one(adapter, name, guidance_scale=1.0)
        assert not same(plain, one(adapter, name, guidance_scale=1.0, negative_prompt="green"))
        return
    (violation,) = adapter.capabilities.check(
        request(name, guidance_scale=1.0, negative_prompt="green").params
    )
    assert violation.param == "negative_prompt"
    assert "guidance_scale" in violation.message and repr(name) in violation.message


@pytest.mark.parametrize("name", names(lambda f: f.guidance != "none"))
def test_guidance_scale_changes_the_image(adapters: Adapters, name: str) -> None:
    adapter = adapters(name)
    assert not same(one(adapter, name, guidance_scale=1.0), one(adapter, name, guidance_scale=6.0))


@pytest.mark.parametrize("name", names(lambda f: f.guidance == "none"))
def test_guidance_on_a_guidance_free_model_is_refused(adapters: Adapters, name: str) -> None:
    adapter = adapters(name)
    (violation,) = adapter.capabilities.check(request(name, guidance_scale=3.5).params)
    assert violation.param == "guidance_scale" and repr(name) in violation.message
    assert one(adapter, name, guidance_scale=0.0).size == size_for(FAMILIES[name])


@pytest.mark.parametrize("name", names(lambda f: f.true_cfg))
def test_a_negative_prompt_on_flux_runs_true_cfg_at_twice_the_passes(
    adapters: Adapters, name: str
) -> None:
    adapter = adapters(name)
    calls, remove = denoiser_calls(adapter.pipe)
    try:
        one(adapter, name, steps=3)
        without = calls["transformer"]
        one(adapter, name, steps=3, negative_prompt="green")
        with_negative = calls["transformer"] - without
    finally:
        remove()
    assert (without, with_negative) == (3, 6)
    caps = adapter.capabilities
    (off,) = caps.check(request(name, negative_prompt="green", true_cfg_scale=1.0).params)
    assert off.param == "true_cfg_scale"
    (alone,) = caps.check(request(name, true_cfg_scale=3.0).params)
    assert alone.param == "true_cfg_scale" and "negative_prompt" in alone.message


def test_true_cfg_is_refused_where_the_pipeline_has_none(adapters: Adapters) -> None:
    (violation,) = adapters("sd3").capabilities.check(request("sd3", true_cfg_scale=3.0).params)
    assert violation.param == "true_cfg_scale" and "'sd3'" in violation.message


# --- steps and schedulers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_the_fewest_steps_run_and_steps_out_of_bounds_are_refused(
    adapters: Adapters, name: str
) -> None:
    adapter = adapters(name)
    caps = adapter.capabilities
    progress = Progress()
    adapter.generate([request(name, steps=caps.min_steps, seeds=(1,))], on_step=progress)
    progress.assert_complete()
    if caps.min_steps > 1:  # PixArt
        (violation,) = caps.check(request(name, steps=caps.min_steps - 1).params)
        assert violation.param == "steps"
    if caps.max_steps is not None:  # turbo by its options, LCM by its scheduler
        (violation,) = caps.check(request(name, steps=caps.max_steps + 1).params)
        assert violation.param == "steps" and repr(name) in violation.message
    expected_max = {"sdxl-turbo": 4, "lcm": 50}.get(name)
    assert caps.max_steps == expected_max


@pytest.mark.parametrize("name", NAMES)
def test_each_advertised_scheduler_is_the_one_that_runs_and_changes_the_image(
    adapters: Adapters, name: str, scheduler_steps: dict[str, list[int]]
) -> None:
    adapter = adapters(name)
    caps = adapter.capabilities
    reference = one(adapter, name, steps=3)
    kandinsky = name.startswith("kandinsky")
    for scheduler in caps.schedulers:
        scheduler_steps.clear()
        progress = Progress()
        (images,) = adapter.generate(
            [request(name, steps=3, seeds=(3,), scheduler=scheduler)], on_step=progress
        )
        progress.assert_complete()
        ran = {cls: len(lengths) for cls, lengths in scheduler_steps.items()}
        cls = SCHEDULERS[scheduler]
        iterations = scheduler_steps[cls][-1]  # every iteration of the loop stepped this class
        expected = {cls: iterations, **({"UnCLIPScheduler": 2} if kandinsky else {})}
        assert ran == expected, scheduler
        if scheduler != caps.defaults.scheduler:
            assert not same(images[0], reference), scheduler


@pytest.mark.parametrize("name", NAMES)
def test_a_scheduler_the_model_cannot_use_is_refused(adapters: Adapters, name: str) -> None:
    caps = adapters(name).capabilities
    unusable = [s for s in SCHEDULERS if s not in caps.schedulers]
    (violation,) = caps.check(request(name, scheduler=unusable[0]).params)
    assert violation.param == "scheduler" and violation.code == "unsupported_scheduler"
    assert repr(name) in violation.message and caps.schedulers[0] in violation.message


def test_flow_matching_models_offer_flow_schedulers_only(adapters: Adapters) -> None:
    assert adapters("sd3").capabilities.schedulers == [
        "flow_match_euler",
        "flow_match_heun",
        "flow_match_lcm",
    ]
    # FluxPipeline passes its own sigmas and `mu`, which FlowMatchHeun's set_timesteps lacks.
    assert adapters("flux-dev").capabilities.schedulers == ["flow_match_euler", "flow_match_lcm"]
    assert adapters("lcm").capabilities.schedulers == ["lcm"]
    # Kandinsky's decoder never scales its input and passes a generator to step().
    assert adapters("kandinsky22").capabilities.schedulers == [
        "ddim",
        "ddpm",
        "dpmpp_2m",
        "dpmpp_2s",
    ]


# --- seeds, batching and ranking --------------------------------------------------------------


def _negatives(name: str) -> list[str | None]:
    return [None, "blurry"] if FAMILIES[name].negative else [None]


@pytest.mark.parametrize(("name", "negative"), [(n, neg) for n in NAMES for neg in _negatives(n)])
def test_a_seed_gives_the_same_image_whatever_the_candidate_count(
    adapters: Adapters, name: str, negative: str | None
) -> None:
    # One image per pipeline call: byte-identical.
    exact = adapters(name, images_per_call=1)
    progress = Progress()
    (three,) = exact.generate(
        [request(name, negative_prompt=negative, seeds=(5, 6, 7))], on_step=progress
    )
    (single,) = exact.generate([request(name, negative_prompt=negative, seeds=(6,))])
    assert same(three[1], single[0])
    assert not same(three[0], three[1])
    progress.assert_complete()  # three calls, one count
    # All candidates in one call (the default, fastest): the same image up to batched
    # kernels' rounding, never another seed's noise.
    batched = adapters(name)
    (three,) = batched.generate([request(name, negative_prompt=negative, seeds=(5, 6, 7))])
    worst, share = levels_apart(three[1], single[0])
    assert worst <= 1 and share < 0.001, (worst, share)


@pytest.mark.parametrize("name", NAMES)
def test_requests_batched_in_one_call_keep_their_own_images_in_order(
    adapters: Adapters, name: str
) -> None:
    adapter = adapters(name, images_per_call=1)
    first = request(name, seeds=(11, 12))
    second = request(name, prompt="a green triangle", seeds=(13,))
    batched = adapter.generate([first, second])
    alone = [adapter.generate([r])[0] for r in (first, second)]
    assert [len(x) for x in batched] == [2, 1]
    for got, want in zip(batched, alone, strict=True):
        assert all(same(g, w) for g, w in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def ranker(tiny_models: tuple[Path, Path]) -> ClipRanker:
    return ClipRanker.load(str(tiny_models[1]), device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_clip_ranking_scores_every_familys_images(
    adapters: Adapters, ranker: ClipRanker, name: str
) -> None:
    (images,) = adapters(name).generate([request(name, seeds=(1, 2, 3))])
    scores = ranker.score(PROMPT, images)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    assert len(set(scores)) == 3  # each image scored on its own pixels
    assert sorted(rank(scores)) == [0, 1, 2]


@pytest.mark.parametrize("name", NAMES)
def test_every_family_hands_tensors_to_ranking_that_encode_to_its_pil_bytes(
    adapters: Adapters, ranker: ClipRanker, name: str
) -> None:
    # What the executor asks for: images left on the device as tensors in [0, 1] (each
    # family's own denormalisation applied), the same bytes once encoded as its "pil" output.
    adapter = adapters(name)
    r = request(name, seeds=(1, 2))
    (pil,) = adapter.generate([r])
    (tensors,) = adapter.generate([r], tensors=True)
    assert all(isinstance(t, torch.Tensor) and t.shape[0] == 3 for t in tensors)
    assert [to_pil(t).tobytes() for t in tensors] == [p.tobytes() for p in pil]
    assert ranker.score(PROMPT, tensors) == pytest.approx(ranker.score(PROMPT, pil), abs=1.0)


# --- memory options ---------------------------------------------------------------------------


def test_vae_tiling_decodes_in_tiles_at_the_exact_size(adapters: Adapters) -> None:
    tiled, plain = adapters("sd1", vae_tiling=True, vae_slicing=True), adapters("sd1")
    assert tiled.pipe.vae.use_tiling and tiled.pipe.vae.use_slicing
    wide = dict(width=128, height=64)  # wider than the VAE's 64 px tile
    a, b = one(tiled, "sd1", **wide), one(plain, "sd1", **wide)
    assert a.size == b.size == (128, 64)
    assert not same(a, b)  # tiles are blended at the seams: another decode ran


def test_channels_last_lays_out_the_denoiser_and_keeps_the_image(adapters: Adapters) -> None:
    fast, plain = adapters("sd1", channels_last=True), adapters("sd1")
    conv = fast.pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.pipe.unet.conv_in.weight.is_contiguous()
    worst, share = levels_apart(one(fast, "sd1"), one(plain, "sd1"))
    assert worst <= 1 and share < 0.01, (worst, share)  # the same image up to kernel rounding


@pytest.mark.parametrize("name", ["sd1", "kandinsky22"])
def test_compile_compiles_the_denoiser_the_pipeline_runs(builds: FamilyBuilds, name: str) -> None:
    """Only the wiring: compiling even a tiny UNet takes minutes on this CPU (Generator.load
    warms it up at load so no job pays it). Kandinsky's combined pipeline runs its decoder's
    UNet, the same module."""
    pipe = Generator.load(str(builds.path(name)), device="cpu", dtype=torch.float32).pipe
    runs = pipe.decoder_pipe.unet if name == "kandinsky22" else pipe.unet
    assert runs._compiled_call_impl is None
    Generator(pipe, model=name, options=ModelOptions(compile=True))
    assert runs._compiled_call_impl is not None


def test_the_warm_up_runs_one_image_and_a_full_call_at_the_native_size(
    adapters: Adapters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compiled denoiser recompiles once for a second batch shape: the warm-up at load runs
    both a single image and a full call's worth, so neither a first job nor a first full
    batch pays for it."""
    gen = adapters("sd1", images_per_call=3)
    seen: list[tuple[int, int, int]] = []
    real = gen.generate

    def record(requests: Any, **kw: Any) -> Any:
        seen.extend((len(r.seeds), r.params.width or 0, r.params.height or 0) for r in requests)
        return real(requests, **kw)

    monkeypatch.setattr(gen, "generate", record)
    gen.warm_up()
    native = (gen.capabilities.native_width, gen.capabilities.native_height)
    assert seen == [(1, *native), (3, *native)]


def test_memory_options_a_pipeline_cannot_honour_are_refused_at_load(builds: FamilyBuilds) -> None:
    with pytest.raises(UnsupportedOption, match=r"cpu_offload='model'.*CPU"):
        Generator.load(
            str(builds.path("sd1")), device="cpu", options=ModelOptions(cpu_offload="model")
        )
    with pytest.raises(UnsupportedOption, match="vae_tiling: VQModel"):
        Generator.load(
            str(builds.path("kandinsky22")), device="cpu", options=ModelOptions(vae_tiling=True)
        )
    with pytest.raises(UnsupportedOption, match="default_scheduler 'ddim' cannot run"):
        Generator.load(
            str(builds.path("flux-schnell")),
            device="cpu",
            options=ModelOptions(default_scheduler="ddim"),
        )


# --- what the adapter refuses ------------------------------------------------------------------


def test_every_text_to_image_pipeline_in_diffusers_has_a_decision() -> None:
    import diffusers
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    classes = {cls.__name__: cls for cls in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}
    undecided = sorted(set(classes) - set(HANDLED) - set(REFUSED))
    assert undecided == [], "new text-to-image pipelines: add each to FAMILIES or REFUSED"
    assert set(HANDLED) & set(REFUSED) == set()
    assert sorted(set(HANDLED) | set(REFUSED)) == sorted(classes)  # no stale entries
    for class_name, family in HANDLED.items():
        for name, needed in family.requirements(class_name).items():
            missing = needed - call_parameters(getattr(diffusers, name))
            assert not missing, f"{name}.__call__ no longer takes {sorted(missing)}"


def test_a_pipeline_daikon_does_not_serve_is_refused_with_the_reason() -> None:
    from diffusers import StableDiffusionPAGPipeline

    with pytest.raises(UnsupportedPipeline, match=r"KandinskyV22PriorPipeline .*not a text-to"):
        Generator(build_kandinsky22_prior())
    with pytest.raises(UnsupportedPipeline, match=r"StableDiffusionPAGPipeline .*enable_pag"):
        Generator(StableDiffusionPAGPipeline(**build_sd1().components))


def test_a_pipeline_whose_call_lacks_what_the_family_passes_is_refused() -> None:
    def __call__(self: Any, prompt: str, **kwargs: Any) -> None:  # old diffusers, say
        raise AssertionError("never called")

    stale = type("StableDiffusionPipeline", (), {"__call__": __call__})()
    with pytest.raises(UnsupportedPipeline) as refused:
        Generator(stale)
    message = str(refused.value)
    assert "callback_on_step_end" in message and "negative_prompt" in message
