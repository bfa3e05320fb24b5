"""What one served model can do, published by the worker that loads it and checked by the API.

A worker derives a `ModelCapabilities` from the pipeline it loaded (worker/families/) and
publishes it; the API validates each submit against it, so a parameter a model cannot honour
is refused with a 422 naming the parameter and the model instead of failing, or being quietly
ignored, on the GPU. The worker runs the same `check` before any work, for deployments where no
capabilities were published yet. Pure python (no torch): the API imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import isqrt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Schedulers a client may name, short name -> diffusers class. Which of them a model can use is
# in its capabilities (`schedulers`): the UNet families take the k-diffusion set their default
# scheduler declares compatible, SD3 and Flux only flow-matching ones, LCM only its own.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2s": "DPMSolverSinglestepScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
    "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
    "flow_match_heun": "FlowMatchHeunDiscreteScheduler",
    "flow_match_lcm": "FlowMatchLCMScheduler",
}
SCHEDULER_BY_CLASS: dict[str, str] = {cls: name for name, cls in SCHEDULERS.items()}

GuidanceKind = Literal["cfg", "distilled", "none"]
# How a model draws: denoising a whole image over steps, or image tokens one after another.
ModelKind = Literal["diffusion", "autoregressive"]
# The sampling parameters a token model may honour (JobRequest fields).
SAMPLING_PARAMS = ("temperature", "top_p", "top_k_tokens")
# What a job does (JobRequest.mode): draw from text, redraw an image (image-to-image), or
# repaint the masked part of one (inpainting).
Mode = Literal["text", "image", "inpaint"]
MODES: tuple[Mode, ...] = ("text", "image", "inpaint")
MODE_NAMES: dict[str, str] = {
    "text": "text-to-image",
    "image": "image-to-image",
    "inpaint": "inpainting",
}

# Violation codes: the scheduler keeps the code jobs already fail with; the rest share one.
UNSUPPORTED_SCHEDULER = "unsupported_scheduler"
UNSUPPORTED_PARAMETER = "unsupported_parameter"


def top_band(width: int, height: int, pixels: bytes) -> tuple[int, int | None]:
    """How many rows a mask keeps at its top (all black), and the first row below them that
    is not all white (None: the mask is exactly such a band). `pixels`: the mask in L mode,
    row by row (PIL's `tobytes()`). Pure bytes, so the API and the worker apply one rule."""
    if len(pixels) != width * height:
        raise ValueError(f"{len(pixels)} bytes are not a {width}x{height} L mask")
    black, white = bytes(width), b"\xff" * width
    kept = 0
    while kept < height and pixels[kept * width : (kept + 1) * width] == black:
        kept += 1
    for y in range(kept, height):
        if pixels[y * width : (y + 1) * width] != white:
            return kept, y
    return kept, None


def scheduler_name(value: str) -> str | None:
    """The short name for a short name or a diffusers class name; None if neither."""
    if value in SCHEDULERS:
        return value
    return SCHEDULER_BY_CLASS.get(value)


class ModelOptions(BaseModel):
    """Per-model settings from the deployment's model table; every field optional.

    Defaults apply to what a request omits. `guidance="none"` declares a checkpoint trained
    without guidance whose architecture still has CFG (SDXL-Turbo, SD-Turbo): guidance_scale and
    negative prompts are then refused instead of running a CFG pass the weights never learnt.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    default_width: int | None = Field(
        None, ge=1, description="Width a request that names none gets; empty = the model's own."
    )
    default_height: int | None = Field(
        None, ge=1, description="Height a request that names none gets; empty = the model's own."
    )
    default_steps: int | None = Field(
        None,
        ge=1,
        description="Denoising steps when a request names none; empty = the "
        "pipeline's own default.",
    )
    default_guidance_scale: float | None = Field(
        None,
        ge=0,
        description="guidance_scale when a request names none; empty = the pipeline's own default.",
    )
    default_true_cfg_scale: float | None = Field(
        None, ge=0, description="Flux's true_cfg_scale when a request names none."
    )
    default_scheduler: str | None = Field(
        None, description="A scheduler name from the API's list; empty = the model's own."
    )
    max_steps: int | None = Field(
        None, ge=1, description="The most steps a request may ask (a turbo model's few)."
    )
    guidance: Literal["none"] | None = Field(
        None,
        description='"none": a checkpoint trained without guidance whose architecture '
        "still has CFG (SDXL-Turbo, SD-Turbo); guidance_scale and negative prompts are refused.",
    )
    prior_steps: int | None = Field(
        None,
        ge=1,
        description="Kandinsky 2.2's prior (text to image embedding): its steps "
        "(a request's `steps` are the decoder's); empty = the pipeline's 25.",
    )
    prior_guidance_scale: float | None = Field(
        None, ge=0, description="Kandinsky 2.2's prior guidance; empty = the pipeline's 4.0."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = Field(
        None,
        description="Weights' dtype for this model; empty or \"auto\" = the worker's DAIKON_DTYPE.",
    )
    cpu_offload: Literal["model", "sequential"] | None = Field(
        None,
        description="For big models on small GPUs: `model` moves each component to the "
        "GPU only while it runs (small slowdown), `sequential` each layer (large slowdown, "
        "least memory).",
    )
    vae_tiling: bool = Field(
        False, description="Decode large images tile by tile (seams blended): less memory."
    )
    vae_slicing: bool = Field(False, description="Decode a batch one image at a time.")
    channels_last: bool = Field(
        False,
        description="The denoiser (UNet or transformer) in channels-last memory "
        "layout: faster convolutions on GPUs.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the denoiser in place, warmed up at load so the "
        "first job does not pay for it (minutes per model). SDPA attention is torch 2's "
        "default and needs no option.",
    )
    # (Images per pipeline call are the model's `limits.images_per_call`, daikon/limits.py.)

    def model_post_init(self, _context: Any) -> None:
        if self.default_scheduler is not None and scheduler_name(self.default_scheduler) is None:
            raise ValueError(
                f"default_scheduler {self.default_scheduler!r} is not a known scheduler; "
                f"known: {', '.join(SCHEDULERS)}"
            )


class ModelDefaults(BaseModel):
    """What a request that omits a parameter gets on this model."""

    model_config = ConfigDict(frozen=True)

    width: int
    height: int
    steps: int
    guidance_scale: float
    true_cfg_scale: float | None = None  # only where supports_true_cfg
    # Token models: what a job that names no sampling parameter gets (null top_k_tokens: off).
    temperature: float | None = None
    top_p: float | None = None
    scheduler: str | None = None  # the loaded scheduler's short name (None: not in SCHEDULERS)


class Violation(BaseModel):
    model_config = ConfigDict(frozen=True)

    param: str
    code: str
    message: str


class UnsupportedParameters(ValueError):
    """Raised by `ModelCapabilities.require`: one or more parameters this model cannot honour."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        super().__init__("; ".join(v.message for v in violations))

    @property
    def code(self) -> str:
        return self.violations[0].code


def _get(params: Mapping[str, Any] | object, key: str) -> Any:
    if isinstance(params, Mapping):
        return params.get(key)
    return getattr(params, key, None)


class ModelCapabilities(BaseModel):
    """One served model's abilities and defaults, as its worker derived them from the pipeline.

    Published as JSON (`model_dump(mode="json")`); unknown fields are ignored when read back so
    a newer worker's additions never break an older API.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    model: str = Field(description="The served model's name (as in GET /v1/models).")
    kind: ModelKind = Field(
        "diffusion",
        description="diffusion: denoises the whole image over `steps`; autoregressive: draws "
        "the image's `image_tokens` one after another (Janus), at one fixed size, with no "
        "steps or scheduler, sampled as `sampling` says.",
    )
    family: str = Field(
        description="e.g. stable-diffusion-xl, flux, pixart-sigma, kandinsky22, janus."
    )
    pipeline_class: str = Field(
        description="The diffusers pipeline (or transformers model class) that runs it."
    )
    image_tokens: int | None = Field(
        None, description="Token models: the image tokens drawn per image (576 for Janus-Pro)."
    )
    codebook_size: int | None = Field(
        None, description="Token models: the image tokenizer's codebook (top_k_tokens' bound)."
    )
    sampling: list[str] = Field(
        default_factory=list,
        description="The sampling parameters this model honours (temperature, top_p, "
        "top_k_tokens); any other is refused.",
    )
    size_multiple: int = Field(description="Width and height must be multiples of this.")
    min_size: int
    max_size: int | None = Field(None, description="Architectural limit; None = none.")
    native_width: int = Field(description="The resolution the model was trained at.")
    native_height: int
    min_steps: int = 1
    max_steps: int | None = None
    schedulers: list[str] = Field(description="Scheduler names this model can run.")
    guidance: GuidanceKind = Field(
        description="cfg: classifier-free guidance (two passes batched as one); distilled: "
        "guidance_scale feeds a guidance embedding (one pass); none: no guidance."
    )
    supports_negative_prompt: bool
    negative_prompt_needs_guidance: bool = Field(
        False, description="The negative prompt acts through CFG: needs guidance_scale > 1."
    )
    supports_true_cfg: bool = Field(
        False,
        description="A negative prompt turns true CFG on at true_cfg_scale: a second "
        "transformer pass per step (about twice the denoising time).",
    )
    supports_progress: bool = True
    modes: list[Mode] = Field(
        default_factory=lambda: list[Mode](["text"]),
        description="Job modes this model runs: text, and image (image-to-image) or inpaint "
        "where diffusers has such a pipeline for it (sharing the loaded weights). A token "
        "model's inpaint is completion: it keeps the image's top rows and draws the rest "
        "(the mask a black top band over white; its notes say the row height).",
    )
    defaults: ModelDefaults
    notes: list[str] = Field(default_factory=list, description="What parameters mean here.")

    @property
    def label(self) -> str:
        return f"model {self.model!r} ({self.family}, {self.pipeline_class})"

    @property
    def token_grid(self) -> int | None:
        """Token models: the side of their square grid of image tokens (24 for Janus-Pro)."""
        return (
            isqrt(self.image_tokens)
            if self.kind == "autoregressive" and self.image_tokens
            else None
        )

    @property
    def token_row_height(self) -> int | None:
        """Token models: the pixels one row of image tokens covers (16 for Janus-Pro)."""
        grid = self.token_grid
        return self.native_height // grid if grid else None

    @property
    def checks_mask_pixels(self) -> bool:
        """Whether `check_mask` reads a mask's pixels (a token model's completion band); a
        diffusion model repaints any mask, so the API need not decode one for it."""
        return self.kind == "autoregressive" and "inpaint" in self.modes

    def check_mask(self, width: int, height: int, pixels: bytes) -> list[Violation]:
        """An inpaint mask this model would not honour exactly, naming `mask` and the model.

        A token model completes an image from its top rows: it can keep only whole rows of its
        token grid, so the mask must be black (0) on the top rows and white (255) on every row
        from a row boundary down. `pixels`: the mask in L mode (PIL's `tobytes()`)."""
        if not self.checks_mask_pixels:
            return []
        m, row, grid = self.label, self.token_row_height or 1, self.token_grid

        def refuse(message: str) -> list[Violation]:
            return [Violation(param="mask", code=UNSUPPORTED_PARAMETER, message=f"mask: {message}")]

        rule = (
            f"{m} completes an image from its top rows, so its mask must be black on the top "
            f"rows and white from a row boundary to the bottom, the boundary a multiple of "
            f"{row} px (one row of its {grid}x{grid} image tokens)"
        )
        if (width, height) != (self.native_width, self.native_height):
            return refuse(
                f"is {width}x{height}; {rule}, at its {self.native_width}x{self.native_height}"
            )
        kept, bad = top_band(width, height, pixels)
        if bad is not None:
            return refuse(
                f"{rule}; pixel row {bad} is not all white (255) but lies below the black (0) "
                f"band of the top {kept} rows"
            )
        if kept == 0:
            return refuse(f"keeps no row: {rule}; to draw the whole image use mode text")
        if kept == height:
            return refuse(f"keeps every row, so there is nothing to complete: {rule}")
        if kept % row:
            below = kept - kept % row
            nearest = sorted({max(below, row), min(below + row, height - row)})
            return refuse(
                f"its black band ends at {kept} px: {rule} (nearest: "
                f"{' or '.join(f'{n} px' for n in nearest)})"
            )
        return []

    def resolve(self, params: Mapping[str, Any] | object) -> dict[str, Any]:
        """The generation parameters with omitted ones (None) taken from this model's defaults."""
        d = self.defaults
        scheduler = _get(params, "scheduler")
        negative = _get(params, "negative_prompt") or None
        true_cfg = _get(params, "true_cfg_scale")
        if true_cfg is None and negative is not None:
            true_cfg = d.true_cfg_scale
        guidance = _get(params, "guidance_scale")
        return {
            "width": _get(params, "width") or d.width,
            "height": _get(params, "height") or d.height,
            "steps": _get(params, "steps") or d.steps,
            "guidance_scale": d.guidance_scale if guidance is None else float(guidance),
            "true_cfg_scale": true_cfg,
            "scheduler": (scheduler_name(scheduler) or scheduler) if scheduler else d.scheduler,
            "negative_prompt": negative,
        }

    def check(self, params: Mapping[str, Any] | object) -> list[Violation]:
        """Every parameter this model would not honour as asked, each naming param and model.

        `params` is a mapping or an object with the job's fields (None = omitted): prompt,
        negative_prompt, width, height, steps, guidance_scale, true_cfg_scale, scheduler, mode.
        """
        out: list[Violation] = []

        def refuse(param: str, message: str, code: str = UNSUPPORTED_PARAMETER) -> None:
            out.append(Violation(param=param, code=code, message=f"{param}: {message}"))

        r = self.resolve(params)
        m = self.label
        mode = _get(params, "mode") or "text"
        tokens = self.kind == "autoregressive"
        if mode not in self.modes:
            why = (
                "a token model draws each image token once, from the prompt and the tokens "
                "before it: it has no noise level to redraw an image at"
                if tokens and mode == "image"
                else "diffusers has no such pipeline for it here"
            )
            refuse(
                "mode",
                f"{m} cannot run mode {mode!r} ({MODE_NAMES.get(mode, mode)}): {why}; its "
                f"modes: {', '.join(self.modes)}",
            )
        fixed = f"{self.native_width}x{self.native_height}"
        if (
            tokens
            and mode != "text"
            and (r["width"], r["height"])
            != (
                self.native_width,
                self.native_height,
            )
        ):
            refuse(
                "image",
                f"is {r['width']}x{r['height']}: {m} draws only {fixed} (its "
                f"{self.image_tokens} image tokens make one fixed grid), so its input image "
                f"must be {fixed}",
            )
        for side in ("width", "height"):
            value = r[side]
            if tokens:
                if mode == "text" and value != (native := getattr(self, f"native_{side}")):
                    refuse(
                        side,
                        f"{m} draws only {fixed} (its {self.image_tokens} image tokens make "
                        f"one fixed grid): omit {side} or send {native}",
                    )
            elif value % self.size_multiple:
                below = value - value % self.size_multiple
                refuse(
                    side,
                    f"{value} is not a multiple of {self.size_multiple} for {m} "
                    f"(nearest: {below or self.size_multiple} or {below + self.size_multiple})",
                )
            elif value < self.min_size or (self.max_size is not None and value > self.max_size):
                top = self.max_size if self.max_size is not None else "any"
                refuse(side, f"{value} is outside {self.min_size}..{top} for {m}")
        for name in SAMPLING_PARAMS:
            value = _get(params, name)
            if value is None:
                continue
            if name not in self.sampling:
                why = (
                    "a diffusion model samples no tokens"
                    if self.kind == "diffusion"
                    else f"it honours only {', '.join(self.sampling) or 'none'}"
                )
                refuse(name, f"{m} cannot use {name}: {why}")
            elif name == "top_k_tokens" and self.codebook_size and value > self.codebook_size:
                refuse(name, f"{value} is more than the {self.codebook_size} tokens of {m}")
        if tokens:
            strength, blur = _get(params, "strength"), _get(params, "mask_blur")
            if mode == "inpaint" and strength is not None and float(strength) != 1.0:
                refuse(
                    "strength",
                    f"{m} draws the masked rows anew from its tokens; it has no noise to add "
                    f"partly, so strength {strength} cannot apply: omit strength or send 1",
                )
            if mode == "inpaint" and blur:
                refuse(
                    "mask_blur",
                    f"{m} keeps or redraws whole rows of image tokens; a blurred edge "
                    f"({blur} px) would keep part of a row: omit mask_blur or send 0",
                )
            steps = _get(params, "steps")
            if (
                steps is not None
                and steps != 1
                and "steps" not in (_get(params, "defaulted") or ())
            ):
                refuse(
                    "steps",
                    f"{m} draws its {self.image_tokens} image tokens one after another; it has "
                    "no denoising steps: omit steps",
                )
            if _get(params, "scheduler"):
                refuse(
                    "scheduler",
                    f"{m} draws image tokens, not denoising steps: it has no scheduler",
                    UNSUPPORTED_SCHEDULER,
                )
            if r["negative_prompt"] is not None:
                refuse(
                    "negative_prompt",
                    f"{m} cannot use a negative prompt: its unconditional rows are the prompt "
                    "with every word padded out, which a negative prompt cannot replace",
                )
            return out
        steps = r["steps"]
        strength = _get(params, "strength")
        if mode != "text" and strength is not None and int(steps * float(strength)) < 1:
            refuse(
                "strength",
                f"{strength} x {steps} steps leaves no denoising step to run on {m}: raise "
                "strength or steps (about steps x strength steps run)",
            )
        if steps < self.min_steps or (self.max_steps is not None and steps > self.max_steps):
            top = self.max_steps if self.max_steps is not None else "any"
            refuse("steps", f"{steps} is outside {self.min_steps}..{top} for {m}")
        scheduler = _get(params, "scheduler")
        if scheduler and r["scheduler"] not in self.schedulers:
            refuse(
                "scheduler",
                f"{scheduler!r} cannot run {m}; it can use: {', '.join(self.schedulers)}",
                UNSUPPORTED_SCHEDULER,
            )
        guidance = _get(params, "guidance_scale")
        if self.guidance == "none" and guidance is not None and float(guidance) != 0.0:
            refuse(
                "guidance_scale",
                f"{m} runs without guidance, so guidance_scale {guidance} would do nothing; "
                "omit it or send 0",
            )
        negative = r["negative_prompt"]
        true_cfg = _get(params, "true_cfg_scale")
        if negative is not None:
            if not self.supports_negative_prompt:
                why = (
                    "it runs without guidance"
                    if self.guidance == "none"
                    else "its pipeline takes no negative prompt"
                )
                refuse("negative_prompt", f"{m} cannot use a negative prompt: {why}")
            elif self.supports_true_cfg:
                if r["true_cfg_scale"] is None or r["true_cfg_scale"] <= 1.0:
                    refuse(
                        "true_cfg_scale",
                        f"a negative prompt on {m} acts through true CFG, which needs "
                        f"true_cfg_scale > 1 (got {r['true_cfg_scale']})",
                    )
            elif self.negative_prompt_needs_guidance and r["guidance_scale"] <= 1.0:
                refuse(
                    "negative_prompt",
                    f"{m} applies a negative prompt through classifier-free guidance, which is "
                    f"off at guidance_scale {r['guidance_scale']}: use guidance_scale > 1",
                )
        if true_cfg is not None:
            if not self.supports_true_cfg:
                refuse("true_cfg_scale", f"{m} has no true CFG")
            elif negative is None and float(true_cfg) > 1.0:
                refuse("true_cfg_scale", f"true CFG on {m} needs a negative_prompt")
        return out

    def require(self, params: Mapping[str, Any] | object) -> None:
        """Raise UnsupportedParameters if `check` finds anything."""
        violations = self.check(params)
        if violations:
            raise UnsupportedParameters(violations)
