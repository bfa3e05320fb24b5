"""FLUX.1 dev and schnell: distilled guidance or none, and negative prompts through true CFG."""

from __future__ import annotations

from typing import Any

from daikon.capabilities import GuidanceKind, ModelOptions
from worker.families.base import BASE_PASSES, Call, Family, Progress, set_timesteps_takes

FLUX_TRUE_CFG_DEFAULT = 4.0  # true_cfg_scale when a negative prompt is given and none asked


class Flux(Family):
    name = "flux"
    passes = BASE_PASSES | {"negative_prompt", "true_cfg_scale"}
    true_cfg = True
    flow_matching = True

    def size_multiple(self, pipe: Any) -> int:
        return int(pipe.vae_scale_factor) * 2  # latents are packed 2 x 2

    def native_size(self, pipe: Any) -> tuple[int, int]:
        side = int(pipe.default_sample_size) * int(pipe.vae_scale_factor)
        return side, side

    def guidance(self, pipe: Any) -> GuidanceKind:
        # dev-style checkpoints embed the guidance scale; schnell-style have no guidance at all.
        return "distilled" if pipe.transformer.config.guidance_embeds else "none"

    def supports_negative(self, pipe: Any, guidance: GuidanceKind) -> bool:
        return True  # through true CFG

    def negative_needs_guidance(self, pipe: Any, options: ModelOptions) -> bool:
        return False

    def default_steps(self, pipe: Any) -> int:
        # FLUX.1-schnell is timestep-distilled for 1-4 steps; dev uses the pipeline's 28.
        return super().default_steps(pipe) if pipe.transformer.config.guidance_embeds else 4

    def default_guidance(self, pipe: Any) -> float:
        return super().default_guidance(pipe) if pipe.transformer.config.guidance_embeds else 0.0

    def scheduler_usable(self, pipe: Any, scheduler: Any) -> bool:
        # FluxPipeline always passes its own sigmas and the resolution shift `mu`.
        if pipe.scheduler.config.get("use_flow_sigmas"):
            return set_timesteps_takes(scheduler, {"mu"})
        return set_timesteps_takes(scheduler, {"sigmas", "mu"})

    def kwargs(self, pipe: Any, call: Call, progress: Progress | None) -> dict[str, Any]:
        kw = super().kwargs(pipe, call, progress)
        if call.negatives is not None:
            kw["true_cfg_scale"] = call.true_cfg_scale
        return kw

    def notes(self, pipe: Any, caps: dict[str, Any], options: ModelOptions) -> list[str]:
        out = []
        if caps["guidance"] == "distilled":
            out.append(
                "guidance_scale is FLUX's distilled guidance (an embedding, one pass), not CFG"
            )
        else:
            out.append("no guidance (schnell-style): guidance_scale must be omitted or 0")
        out.append(
            "a negative prompt turns true CFG on at true_cfg_scale (default "
            f"{caps['defaults'].true_cfg_scale}): a second transformer pass per step, about "
            "twice the denoising time"
        )
        return out
