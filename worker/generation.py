"""`Generator`: a loaded pipeline, its family (worker/families/) and its capabilities.

It checks requests against the model's capabilities, groups the requests that can share a
pipeline call, runs them (in chunks of `images_per_call`, on the scheduler asked, with
progress) through the family's adapter, and refuses an image the pipeline silently resized.
Loading places the pipeline on its device and applies the model's memory and speed options.

torch and diffusers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

from PIL import Image

from daikon.capabilities import (
    SCHEDULER_BY_CLASS,
    SCHEDULERS,
    ModelCapabilities,
    ModelDefaults,
    ModelOptions,
    scheduler_name,
)
from daikon.contract import JobParams
from worker.families import (
    FLUX_TRUE_CFG_DEFAULT,
    Call,
    Candidate,
    ChunkSink,
    Progress,
    StepCallback,
    UnsupportedOption,
    candidate_size,
    edit_modes,
    family_for,
)


@dataclass(frozen=True)
class GenerationRequest:
    """One job's images: its validated parameters as queued (the contract's JobParams, never
    copied field by field), one seed per image, and what only the worker knows: an edit's
    input images, read from storage (`image` is redrawn in mode image, repainted where `mask`
    is white in mode inpaint).

    A null width, height, steps or guidance_scale in the params means the model's default.
    """

    params: JobParams
    seeds: tuple[int, ...]  # one per image; image i starts from seed i's noise
    image: Image.Image | None = None
    mask: Image.Image | None = None

    @classmethod
    def of(
        cls,
        prompt: str,
        seeds: Sequence[int],
        *,
        image: Image.Image | None = None,
        mask: Image.Image | None = None,
        **params: Any,
    ) -> GenerationRequest:
        """A request outside a job (benches, training, tests): `params` are JobParams'
        fields; it keeps an image per seed."""
        n = len(seeds)
        job = JobParams(prompt=prompt, candidates=n, top_k=n, **params)
        return cls(job, tuple(seeds), image, mask)


def _edit_fields(request: GenerationRequest) -> dict[str, Any]:
    """An edit's part of a pipeline call: the input in RGB, the mask in L, blurred as asked."""
    from PIL import ImageFilter

    params = request.params
    if params.mode == "text":
        return {}
    assert request.image is not None
    mask = request.mask.convert("L") if request.mask is not None else None
    if mask is not None and params.mask_blur:
        mask = mask.filter(ImageFilter.GaussianBlur(params.mask_blur))
    strength = params.strength if params.strength is not None else 1.0
    return {
        "mode": params.mode,
        "image": request.image.convert("RGB"),
        "mask": mask,
        "strength": strength,
    }


# --- placement and memory options ------------------------------------------------------------


def place(pipe: Any, *, device: str, options: ModelOptions) -> None:
    """Put the pipeline on its device, or have it offloaded to the CPU between uses."""
    if options.cpu_offload is None:
        pipe.to(device)
        return
    if device == "cpu" or device.startswith("cpu:"):
        raise UnsupportedOption(
            f"cpu_offload={options.cpu_offload!r} offloads from an accelerator to the CPU; "
            "this worker's device is the CPU"
        )
    family_for(pipe).offload(pipe, device=device, sequential=options.cpu_offload == "sequential")


def apply_vae_options(pipe: Any, options: ModelOptions) -> None:
    """VAE tiling and slicing as the options ask; one this VAE cannot do is refused."""
    vae = getattr(pipe, "vae", None) or getattr(pipe, "movq", None)
    for option, attribute, method in (
        ("vae_tiling", "use_tiling", "enable_tiling"),
        ("vae_slicing", "use_slicing", "enable_slicing"),
    ):
        if not getattr(options, option):
            continue
        if vae is None or not hasattr(vae, attribute):
            raise UnsupportedOption(
                f"{option}: {type(vae).__name__} of {type(pipe).__name__} has no {method}"
            )
        getattr(vae, method)()


def denoiser_name(pipe: Any) -> str | None:
    """The attribute holding the pipeline's denoiser: its UNet or its transformer."""
    return next((n for n in ("unet", "transformer") if getattr(pipe, n, None) is not None), None)


def apply_speed_options(pipe: Any, options: ModelOptions) -> None:
    """channels_last and torch.compile of the denoiser, as the options ask; a pipeline with no
    UNet or transformer to apply them to is refused. Both change the module in place, so a
    pipeline that holds it twice (Kandinsky's combined pipeline and its decoder) runs it so."""
    if not (options.channels_last or options.compile):
        return
    import torch

    name = denoiser_name(pipe)
    if name is None:
        asked = [o for o in ("channels_last", "compile") if getattr(options, o)]
        raise UnsupportedOption(
            f"{', '.join(asked)}: {type(pipe).__name__} has no single UNet or transformer"
        )
    denoiser = getattr(pipe, name)
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if options.compile:
        denoiser.compile()  # torch.compile of its forward, in place


# Settings for a scheduler built from another one's config. PNDM's Runge-Kutta warm-up (its
# default when the config does not say) fails below about a dozen steps; SD 1.5's own PNDM
# config skips it, and so does a PNDM a client picks.
_CONVERSION: dict[str, dict[str, Any]] = {"PNDMScheduler": {"skip_prk_steps": True}}


# --- the adapter ------------------------------------------------------------------------------


class Generator:
    """A loaded pipeline, its family and its capabilities: checks and runs requests."""

    def __init__(
        self,
        pipe: Any,
        *,
        model: str = "default",
        options: ModelOptions | None = None,
        device: str = "cpu",
        images_per_call: int | None = None,
    ):
        self.pipe = pipe
        self.device = device
        # At most this many images per pipeline call (denoised and decoded together): a cancel
        # waits at most one step of one such chunk. None = all of a call's images at once.
        # Batched kernels may round an image a level apart in a few pixels from the same seed
        # drawn alone; 1 makes a seed's image byte-identical whatever the candidate count.
        self.images_per_call = images_per_call
        self.options = options or ModelOptions()
        self.family = family_for(pipe)
        apply_vae_options(pipe, self.options)
        apply_speed_options(pipe, self.options)
        host = self.family.scheduler_host(pipe)
        self.base_scheduler = host.scheduler
        self._schedulers: dict[str, Any] = {}
        self._edit_pipes: dict[str, Any] = {}  # mode -> pipeline sharing self.pipe's weights
        self.capabilities = self._derive(model)

    @classmethod
    def load(
        cls,
        model_id: str,
        *,
        model: str = "default",
        device: str,
        dtype: Any = None,
        options: ModelOptions | None = None,
        images_per_call: int | None = None,
    ) -> Generator:
        import torch
        from diffusers import AutoPipelineForText2Image
        from diffusers.utils import logging as diffusers_logging

        options = options or ModelOptions()
        if options.dtype not in (None, "auto"):
            dtype = getattr(torch, options.dtype)
        diffusers_logging.disable_progress_bar()
        pipe = AutoPipelineForText2Image.from_pretrained(model_id, dtype=dtype)
        family_for(pipe)  # refuse before moving weights to the device
        place(pipe, device=device, options=options)
        pipe.set_progress_bar_config(disable=True)
        generator = cls(
            pipe, model=model, options=options, device=device, images_per_call=images_per_call
        )
        if options.compile:
            generator.warm_up()
        return generator

    def modules(self) -> list[Any]:
        """The pipeline's torch modules (what its weights are)."""
        import torch

        return [c for c in self.pipe.components.values() if isinstance(c, torch.nn.Module)]

    def warm_up(self) -> None:
        """Short generations at the model's native size, one image and then a full call's
        worth: a compiled denoiser compiles here, at load, for both batch shapes (the second
        makes the batch dimension dynamic), not in the first job or the first full batch."""
        caps = self.capabilities
        for n in sorted({1, self.images_per_call or 1}):
            self.generate(
                [
                    GenerationRequest.of(
                        "warm-up",
                        range(n),
                        width=caps.native_width,
                        height=caps.native_height,
                        steps=max(caps.min_steps, 2),
                    )
                ]
            )

    # capabilities ----------------------------------------------------------------------------
    def _usable_schedulers(self) -> dict[str, Any]:
        import diffusers

        base = self.base_scheduler
        candidates = self.family.scheduler_candidates(base)
        usable: dict[str, Any] = {}
        for name, class_name in SCHEDULERS.items():
            if class_name not in candidates:
                continue
            if class_name == type(base).__name__:
                usable[name] = base
                continue
            cls = getattr(diffusers, class_name, None)
            if cls is None:
                continue
            try:
                scheduler = cls.from_config(base.config, **_CONVERSION.get(class_name, {}))
            except Exception:  # a config this scheduler cannot take: not offered
                continue
            if self.family.scheduler_usable(self.pipe, scheduler):
                usable[name] = scheduler
        return usable

    def _derive(self, model: str) -> ModelCapabilities:
        pipe, family, options = self.pipe, self.family, self.options
        self._schedulers = self._usable_schedulers()
        guidance = family.guidance(pipe)
        if options.guidance == "none":
            guidance = "none"
        multiple = family.size_multiple(pipe)
        native_w, native_h = family.native_size(pipe)
        max_steps = family.max_steps(pipe)
        if options.max_steps is not None:
            max_steps = min(max_steps or options.max_steps, options.max_steps)
        own = SCHEDULER_BY_CLASS.get(type(self.base_scheduler).__name__)
        default_scheduler = own
        if options.default_scheduler is not None:
            default_scheduler = scheduler_name(options.default_scheduler)
            if default_scheduler not in self._schedulers:
                raise UnsupportedOption(
                    f"default_scheduler {options.default_scheduler!r} cannot run "
                    f"{type(pipe).__name__}; usable: {', '.join(self._schedulers)}"
                )
        if guidance == "none":
            default_guidance = 0.0
        elif options.default_guidance_scale is not None:
            default_guidance = options.default_guidance_scale
        else:
            default_guidance = family.default_guidance(pipe)
        defaults = ModelDefaults(
            width=options.default_width or native_w,
            height=options.default_height or native_h,
            steps=options.default_steps or family.default_steps(pipe),
            guidance_scale=default_guidance,
            true_cfg_scale=(
                (options.default_true_cfg_scale or FLUX_TRUE_CFG_DEFAULT)
                if family.true_cfg
                else None
            ),
            scheduler=default_scheduler,
        )
        fields: dict[str, Any] = dict(
            model=model,
            family=family.name,
            pipeline_class=type(pipe).__name__,
            size_multiple=multiple,
            min_size=multiple,
            max_size=family.max_size(pipe),
            native_width=native_w,
            native_height=native_h,
            min_steps=family.min_steps(pipe),
            max_steps=max_steps,
            schedulers=list(self._schedulers),
            guidance=guidance,
            supports_negative_prompt=family.supports_negative(pipe, guidance),
            negative_prompt_needs_guidance=(
                guidance == "cfg" and family.negative_needs_guidance(pipe, options)
            ),
            supports_true_cfg=family.true_cfg,
            supports_progress=True,
            defaults=defaults,
        )
        notes = family.notes(pipe, fields, options)
        fields["modes"], mode_notes = edit_modes(pipe, family)
        notes += mode_notes
        if options.guidance == "none":
            notes.append(
                "configured as guidance-free (e.g. a turbo checkpoint): guidance_scale and "
                "negative prompts are refused"
            )
        caps = ModelCapabilities(**fields, notes=notes)
        # The deployment's own defaults must be requests this model accepts.
        bad = caps.check({})
        if bad:
            raise UnsupportedOption(f"{model}: its defaults are not servable: {bad[0].message}")
        return caps

    def edit_pipeline(self, mode: str) -> Any:
        """The image-to-image or inpainting pipeline, built once from the loaded one with
        `from_pipe`: the same UNet, VAE and text encoder objects, never a second copy."""
        if mode not in self._edit_pipes:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if mode == "image" else AutoPipelineForInpainting
            edit = auto.from_pipe(self.pipe)
            edit.set_progress_bar_config(disable=True)
            self._edit_pipes[mode] = edit
        return self._edit_pipes[mode]

    def supported_schedulers(self) -> list[str]:
        return list(self.capabilities.schedulers)

    def check(self, request: GenerationRequest) -> None:
        """Refuse what this model cannot do, before any work (UnsupportedParameters)."""
        self.capabilities.require(request.params)

    # generation ------------------------------------------------------------------------------
    def _resolve(self, request: GenerationRequest) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not request.seeds:
            raise ValueError("a generation request needs at least one seed")
        self.check(request)
        params = request.params
        r = self.capabilities.resolve(params)
        r["guidance_scale"] = 0.0 if self.capabilities.guidance == "none" else r["guidance_scale"]
        if params.mode != "text":
            if request.image is None or (params.mode == "inpaint" and request.mask is None):
                raise ValueError(f"mode {params.mode} needs an image (and inpaint a mask)")
            r["width"], r["height"] = request.image.size
        # Requests share a call when they agree on every shared parameter (JobParams.shared),
        # as this model resolves it, and on their input images.
        negative = r["negative_prompt"] is not None
        shared = dict(params.shared()) | {
            **r,
            "negative_prompt": negative,
            "true_cfg_scale": r["true_cfg_scale"] if negative else None,
        }
        return (id(request.image), id(request.mask), *shared.items()), r

    @overload
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: Literal[False] = False,
        on_chunk: ChunkSink | None = None,
    ) -> list[list[Image.Image]]: ...

    @overload
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: bool,
        on_chunk: ChunkSink | None = None,
    ) -> list[list[Candidate]]: ...

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        *,
        on_step: StepCallback | None = None,
        tensors: bool = False,
        on_chunk: ChunkSink | None = None,
    ) -> list[list[Candidate]] | list[list[Image.Image]]:
        """Images for each request, in request order; requests that share every parameter but
        prompt and seeds run in one pipeline call (each image keeps its own seed's noise).
        `tensors`: where the pipeline can, images come back as tensors on its device (see
        `Candidate`); otherwise, and always for inpainting (its overlay is PIL's), PIL images.
        With `on_chunk`, each pipeline call's images go there per request once the call ends
        (not kept: what is returned is what was not handed over)."""
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        resolved: list[dict[str, Any]] = []
        for i, request in enumerate(requests):
            key, r = self._resolve(request)
            groups[key].append(i)
            resolved.append(r)
        results: list[list[Candidate]] = [[] for _ in requests]
        for indices in groups.values():
            first = resolved[indices[0]]
            members = [requests[i] for i in indices]
            call = Call(
                prompts=[r.params.prompt for r in members for _ in r.seeds],
                negatives=(
                    [r.params.negative_prompt or "" for r in members for _ in r.seeds]
                    if first["negative_prompt"] is not None
                    else None
                ),
                seeds=[s for r in members for s in r.seeds],
                width=first["width"],
                height=first["height"],
                steps=first["steps"],
                guidance_scale=first["guidance_scale"],
                true_cfg_scale=first["true_cfg_scale"],
                params=members[0].params,
                **_edit_fields(members[0]),
            )
            if tensors and call.mode != "inpaint":
                call = dataclasses.replace(call, output_type="pt")
            images = self._run(call, first["scheduler"], on_step)
            parts = []
            offset = 0
            for i in indices:
                n = len(requests[i].seeds)
                parts.append((i, 0, images[offset : offset + n]))
                offset += n
            if on_chunk is not None:
                on_chunk(parts)
            else:
                for i, _, mine in parts:
                    results[i] = mine
        return results

    def _use_scheduler(self, name: str | None, pipe: Any) -> None:
        scheduler = self._schedulers[name] if name is not None else self.base_scheduler
        host = self.family.scheduler_host(pipe)
        if host.scheduler is not scheduler:
            host.scheduler = scheduler
            if host is not pipe and hasattr(pipe, "scheduler"):
                pipe.scheduler = scheduler  # the combined pipeline's registered component

    def _run(self, call: Call, scheduler: str | None, on_step: StepCallback | None) -> list[Any]:
        import torch

        pipe = self.pipe if call.mode == "text" else self.edit_pipeline(call.mode)
        self._use_scheduler(scheduler, pipe)
        size = self.images_per_call or len(call.seeds)
        starts = range(0, len(call.seeds), size)
        progress = Progress(on_step, chunks=len(starts)) if on_step is not None else None
        images: list[Any] = []
        for start in starts:
            chunk = dataclasses.replace(
                call,
                prompts=call.prompts[start : start + size],
                negatives=(
                    call.negatives[start : start + size] if call.negatives is not None else None
                ),
                seeds=call.seeds[start : start + size],
            )
            if progress is not None and start:
                progress.next_chunk()
            with torch.inference_mode():
                images += self.family.run(pipe, chunk, progress, self.options)
        if len(images) != len(call.seeds):
            raise RuntimeError(
                f"{type(self.pipe).__name__} returned {len(images)} images for "
                f"{len(call.seeds)} seeds"
            )
        for image in images:
            drawn = candidate_size(image)
            if drawn != (call.width, call.height):
                raise RuntimeError(
                    f"{type(self.pipe).__name__} drew {drawn[0]}x{drawn[1]} for "
                    f"{call.width}x{call.height}: refusing a silently resized image"
                )
        if call.mode == "inpaint":
            # The pipeline repaints in latent space, so the VAE would change every pixel a
            # little: paste the result over the original where the mask is not white, so the
            # kept area is the input's own pixels (byte-identical where the mask is black).
            assert call.image is not None and call.mask is not None
            overlay = pipe.image_processor.apply_overlay
            images = [overlay(call.mask, call.image, image) for image in images]
        return images
