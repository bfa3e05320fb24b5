"""Image-to-image and inpainting through the family adapter, for every family diffusers has
such a pipeline for (tiny random-weight builds of tests/families.py): the edit pipelines share
the loaded model's weights, images keep their input's size, the kept pixels of an inpaint are
the input's own, about steps x strength steps run, seeds reproduce, and a family without the
pipeline says so in its capabilities."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from daikon.capabilities import UnsupportedParameters
from tests.families import FAMILIES, Adapters, FamilyBuilds, Progress, size_for
from worker.generation import GenerationRequest, Generator

EDITING = {"sd1", "sd2", "sdxl", "flux-dev", "flux-schnell"}
# LCM: diffusers has no inpainting pipeline. The tiny SD3 has 4 latent channels where the real
# one has 16, which is what SD3's inpainting pipeline requires: refused at load, naming it.
IMAGE_ONLY = {"lcm", "sd3"}
NEITHER = {"pixart-alpha", "pixart-sigma", "kandinsky22"}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapters]:
    """The family builds loaded through the adapter, one torch thread (a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Adapters(FamilyBuilds(tmp_path_factory.mktemp("edit-families")))
    torch.set_num_threads(before)


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def half_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, size[1] // 2, size[0], size[1]))
    return mask


def edit(name: str, mode: str, **kw: Any) -> GenerationRequest:
    size = size_for(FAMILIES[name])
    base: dict[str, Any] = dict(
        prompt="a red circle",
        negative_prompt=None,
        width=None,
        height=None,
        steps=4,
        guidance_scale=None,
        seeds=(1, 2),
        mode=mode,
        image=picture(size),
        mask=half_mask(size) if mode == "inpaint" else None,
        strength=0.5,
    )
    return GenerationRequest.of(**{**base, **kw})


def denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or pipe.transformer


@pytest.mark.parametrize("name", sorted(EDITING | IMAGE_ONLY | NEITHER))
def test_each_family_publishes_the_modes_diffusers_has_a_pipeline_for(
    adapters: Adapters, name: str
) -> None:
    caps = adapters(name).capabilities
    expected = (
        ["text", "image", "inpaint"]
        if name in EDITING
        else ["text", "image"]
        if name in IMAGE_ONLY
        else ["text"]
    )
    assert caps.modes == expected
    missing = [m for m in ("image", "inpaint") if m not in expected]
    for mode in missing:
        assert any(f"(mode {mode})" in note for note in caps.notes), caps.notes
        with pytest.raises(UnsupportedParameters, match=f"cannot run mode '{mode}'"):
            adapters(name).check(edit(name, mode))


@pytest.mark.parametrize("name", sorted(EDITING | IMAGE_ONLY))
def test_image_to_image_shares_the_weights_and_runs_steps_times_strength(
    adapters: Adapters, name: str
) -> None:
    # One image per call: batched kernels may round a level apart (as for text jobs).
    adapter: Generator = adapters(name, images_per_call=1)
    progress = Progress()
    (images,) = adapter.generate([edit(name, "image", steps=4, strength=0.5)], on_step=progress)
    pipe = adapter.edit_pipeline("image")
    assert type(pipe).__name__.endswith("Img2ImgPipeline")
    assert denoiser(pipe) is denoiser(adapter.pipe) and pipe.vae is adapter.pipe.vae
    assert [im.size for im in images] == [size_for(FAMILIES[name])] * 2
    # 4 steps x strength 0.5: what a text job of 2 steps runs (a multistep scheduler may add
    # its warm-up). LCM's scheduler spreads all 4 steps over the shortened schedule instead
    # (its capabilities say so).
    text = Progress()
    width, height = size_for(FAMILIES[name])
    adapter.generate(
        [
            GenerationRequest.of(
                "a red circle", (1, 2), width=width, height=height, steps=4 if name == "lcm" else 2
            )
        ],
        on_step=text,
    )
    assert progress.assert_complete() == text.assert_complete()
    again = adapter.generate([edit(name, "image", steps=4, strength=0.5, seeds=(2,))])[0][0]
    assert again.tobytes() == images[1].tobytes()  # seed 2, alone or second of two


@pytest.mark.parametrize("name", sorted(EDITING))
def test_inpainting_keeps_the_unmasked_pixels_and_shares_the_weights(
    adapters: Adapters, name: str
) -> None:
    adapter: Generator = adapters(name)
    request = edit(name, "inpaint", strength=1.0, steps=2)
    (images,) = adapter.generate([request])
    pipe = adapter.edit_pipeline("inpaint")
    assert type(pipe).__name__.endswith("InpaintPipeline")
    assert denoiser(pipe) is denoiser(adapter.pipe) and pipe.vae is adapter.pipe.vae
    assert request.image is not None and request.mask is not None
    original, keep = np.asarray(request.image), np.asarray(request.mask) == 0
    for image in images:
        result = np.asarray(image)
        assert (result[keep] == original[keep]).all()
        assert (result[~keep] != original[~keep]).any()


def test_mask_blur_softens_the_seam_into_the_kept_side(adapters: Adapters) -> None:
    adapter = adapters("sd1")
    hard = adapter.generate([edit("sd1", "inpaint", strength=1.0, steps=2, seeds=(4,))])[0][0]
    soft = adapter.generate(
        [edit("sd1", "inpaint", strength=1.0, steps=2, seeds=(4,), mask_blur=1)]
    )[0][0]
    size = size_for(FAMILIES["sd1"])
    original = np.asarray(picture(size))
    edge = size[1] // 2 - 1  # the last kept row: unchanged with a hard edge, blended with blur
    assert (np.asarray(hard)[edge] == original[edge]).all()
    assert (np.asarray(soft)[edge] != original[edge]).any()
    assert (np.asarray(soft)[0] == original[0]).all()  # far from the mask: still the input's


def test_text_image_and_inpaint_share_one_unet_with_the_shapes_size(adapters: Adapters) -> None:
    """The one loaded model serves every mode: no second copy of any weight."""
    adapter = adapters("sd1")
    pipes = [adapter.pipe, adapter.edit_pipeline("image"), adapter.edit_pipeline("inpaint")]
    params = {id(p) for pipe in pipes for p in pipe.unet.parameters()}
    assert len(params) == len(list(adapter.pipe.unet.parameters()))
    assert all(pipe.text_encoder is adapter.pipe.text_encoder for pipe in pipes)
    assert isinstance(adapter.pipe.unet, torch.nn.Module)
