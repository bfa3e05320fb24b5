"""Seconds per image and peak memory of full-size SDXL, SD3-medium and FLUX.1-dev architectures.

Each architecture is built from its published configuration (written below) with random
weights, directly on the device: nothing is downloaded. Tokenizers are built offline (byte-level
CLIP BPE, character-level T5), so prompts tokenize differently from the real models, which
does not change the work done: sequence lengths are padded to the same fixed lengths. Every run
goes through its worker/families/ adapter at the model's native resolution, as the worker runs
a job. Random weights make noise images, and fp16 may overflow to NaN in places; neither
changes the time or memory a step takes.

    .venv/bin/python bench/gpu_families.py [--family sdxl sd3 flux] [--images 1 4]
        [--repeats 2] [--write docs/benchmarks.md]
    .venv/bin/python bench/gpu_families.py --cpu-smoke   # same code path, tiny sizes, on CPU

Without CUDA the script runs the CPU smoke (and says so): its figures measure nothing.
"""

from __future__ import annotations

import argparse
import gc
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a red circle above a blue square, studio photograph"

# --- published configurations (diffusers / transformers field names) ------------------------

CLIP_L = dict(  # openai/clip-vit-large-patch14 text tower
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    vocab_size=49408,
)
CLIP_G = dict(  # OpenCLIP ViT-bigG/14 text tower (SDXL's and SD3's second encoder)
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    projection_dim=1280,
    hidden_act="gelu",
    vocab_size=49408,
)
T5_XXL = dict(  # google/t5-v1_1-xxl encoder (SD3, FLUX)
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
)
VAE_SDXL = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
VAE_FLOW = dict(  # SD3's and FLUX's 16-channel VAE (scaling and shift set per model)
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    sample_size=1024,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
UNET_SDXL = dict(  # stabilityai/stable-diffusion-xl-base-1.0
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 6 x 256 + CLIP-G's 1280
)
SD3_MEDIUM = dict(  # stabilityai/stable-diffusion-3-medium-diffusers transformer
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=192,
)
FLUX_DEV = dict(  # black-forest-labs/FLUX.1-dev transformer
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

# The CPU smoke: the same builders with every width, depth and resolution cut down.
SMOKE: dict[str, dict[str, Any]] = {
    "clip_l": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    ),
    "clip_g": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        projection_dim=32,
    ),
    "t5": dict(d_model=64, d_kv=8, d_ff=37, num_layers=2, num_heads=4),
    "vae": dict(
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64
    ),
    "unet": dict(
        sample_size=8,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 1),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=64,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    ),
    "sd3": dict(
        sample_size=8,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
    ),
    "flux": dict(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    ),
}


@dataclass(frozen=True)
class Build:
    device: str
    dtype: Any
    smoke: bool

    def cfg(self, full: dict[str, Any], part: str) -> dict[str, Any]:
        return {**full, **SMOKE[part]} if self.smoke else dict(full)

    def make(self, factory: Callable[[], Any]) -> Any:
        """Allocate and initialise on the device itself (a 12B model never visits the CPU),
        then cast: one component at a time holds float32."""
        import torch

        torch.manual_seed(0)
        with torch.device(self.device):
            module = factory()
        return module.to(dtype=self.dtype).eval()


def _clip(b: Build, full: dict[str, Any], part: str, tokenizer: Any, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        **b.cfg(full, part),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return b.make(lambda: cls(config))


def _t5(b: Build, tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        **b.cfg(T5_XXL, "t5"),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return b.make(lambda: T5EncoderModel(config))


def _vae(b: Build, full: dict[str, Any], **extra: Any) -> Any:
    from diffusers import AutoencoderKL

    blocks = len(full["block_out_channels"])
    config = {
        **b.cfg(full, "vae"),
        "down_block_types": ("DownEncoderBlock2D",) * blocks,
        "up_block_types": ("UpDecoderBlock2D",) * blocks,
        **extra,
    }
    return b.make(lambda: AutoencoderKL(**config))


def build_sdxl(b: Build) -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    from tests.tiny_models import _tokenizer as clip_tokenizer

    tok = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(b, VAE_SDXL),
        text_encoder=_clip(b, CLIP_L, "clip_l", tok, projection=False),
        text_encoder_2=_clip(b, CLIP_G, "clip_g", tok, projection=True),
        tokenizer=tok,
        tokenizer_2=clip_tokenizer(),
        unet=b.make(lambda: UNet2DConditionModel(**b.cfg(UNET_SDXL, "unet"))),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
    )


def build_sd3(b: Build) -> Any:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    from tests.families import t5_tokenizer
    from tests.tiny_models import _tokenizer as clip_tokenizer

    tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=b.make(lambda: SD3Transformer2DModel(**b.cfg(SD3_MEDIUM, "sd3"))),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(b, VAE_FLOW, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip(b, CLIP_L, "clip_l", tok, projection=True),
        tokenizer=tok,
        text_encoder_2=_clip(b, CLIP_G, "clip_g", tok, projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(b, t5_tok),
        tokenizer_3=t5_tok,
    )


def build_flux(b: Build) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from tests.families import t5_tokenizer
    from tests.tiny_models import _tokenizer as clip_tokenizer

    tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae(b, VAE_FLOW, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_clip(b, CLIP_L, "clip_l", tok, projection=False),
        tokenizer=tok,
        text_encoder_2=_t5(b, t5_tok),
        tokenizer_2=t5_tok,
        transformer=b.make(lambda: FluxTransformer2DModel(**b.cfg(FLUX_DEV, "flux"))),
        image_encoder=None,
        feature_extractor=None,
    )


@dataclass(frozen=True)
class Arch:
    name: str
    label: str
    build: Callable[[Build], Any]
    steps: int  # the steps the published figures we compare with use
    dtype: str  # the dtype it is usually served in


ARCHES = {
    a.name: a
    for a in (
        Arch("sdxl", "SDXL base 1.0", build_sdxl, 30, "float16"),
        Arch("sd3", "SD3-medium", build_sd3, 28, "bfloat16"),
        Arch("flux", "FLUX.1-dev", build_flux, 28, "bfloat16"),
    )
}


def _params(pipe: Any) -> float:
    import torch

    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            total += sum(p.numel() for p in component.parameters())
    return total / 1e9


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS (Linux KiB)


def run_arch(
    arch: Arch,
    *,
    device: str,
    dtype_name: str | None,
    smoke: bool,
    images: list[int],
    repeats: int,
    steps: int | None,
) -> list[dict[str, Any]]:
    import torch

    from worker.generation import GenerationRequest, Generator

    dtype = getattr(torch, dtype_name or (arch.dtype if not smoke else "float32"))
    started = time.perf_counter()
    pipe = arch.build(Build(device=device, dtype=dtype, smoke=smoke))
    pipe.set_progress_bar_config(disable=True)
    adapter = Generator(pipe, model=arch.name, device=device)
    build_seconds = time.perf_counter() - started
    caps = adapter.capabilities
    # The smoke draws 64 px (every family's multiple divides it); a benchmark, the native size.
    width, height = (64, 64) if smoke else (caps.native_width, caps.native_height)
    n_steps = steps or (2 if smoke else arch.steps)
    billions = _params(pipe)

    def generate(n: int, k_steps: int) -> None:
        seeds = tuple(range(n))
        adapter.generate(
            [GenerationRequest.of(PROMPT, seeds, width=width, height=height, steps=k_steps)]
        )

    generate(1, 1)  # warm-up: kernels, allocator, lazy initialisation
    rows = []
    for n in images:
        times = []
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            generate(n, n_steps)
            _sync(device)
            times.append(time.perf_counter() - t)
        rows.append(
            dict(
                arch=arch.label,
                pipeline=caps.pipeline_class,
                dtype=str(dtype).split(".")[-1],
                size=f"{width}x{height}",
                steps=n_steps,
                images=n,
                seconds=statistics.median(times) / n,
                peak=_peak_gib(device),
                params=billions,
                build=build_seconds,
            )
        )
    return rows


def table(rows: list[dict[str, Any]], *, device: str) -> str:
    memory = "peak GPU GiB" if device.startswith("cuda") else "peak RSS GiB"
    lines = [
        f"| model | pipeline | dtype | size | steps | images/call | s/image | {memory} "
        "| params (B) | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['pipeline']} | {r['dtype']} | {r['size']} | {r['steps']} "
            f"| {r['images']} | {r['seconds']:.2f} | {r['peak']:.1f} | {r['params']:.2f} "
            f"| {r['build']:.0f} |"
        )
    return "\n".join(lines)


def publish(report: str, write: Path | None, *, smoke: bool) -> None:
    """Print the report; append it to `write` too, unless it is a CPU smoke's (measures
    nothing)."""
    print(report)
    if write is not None:
        if smoke:
            raise SystemExit("not writing CPU smoke figures as benchmarks")
        with write.open("a") as f:
            f.write("\n" + report)


def machine(device: str) -> str:
    import diffusers
    import torch

    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_properties(torch.device(device))
        where = f"{gpu.name}, {gpu.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        where = f"CPU only ({platform.processor() or platform.machine()})"
    return f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=list(ARCHES), default=list(ARCHES))
    parser.add_argument("--images", nargs="+", type=int, default=[1], help="images per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's usual")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    args = parser.parse_args()

    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()  # casting notices about random weights
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else args.device
    if smoke and not args.cpu_smoke:
        print("no CUDA device: running the CPU smoke instead (its figures measure nothing)")
    rows: list[dict[str, Any]] = []
    for name in args.family:
        rows += run_arch(
            ARCHES[name],
            device=device,
            dtype_name=args.dtype,
            smoke=smoke,
            images=args.images,
            repeats=args.repeats,
            steps=args.steps,
        )
        gc.collect()  # the last family's weights, before the next is built
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        print(f"{name}: done", flush=True)
    title = "CPU smoke (reduced sizes: not a benchmark)" if smoke else "full-size, random weights"
    report = (
        f"### {title}\n\nMachine: {machine(device)}\n\nCommand: `{' '.join(sys.argv)}`\n\n"
        f"{table(rows, device=device)}\n"
    )
    publish(report, args.write, smoke=smoke)


if __name__ == "__main__":
    main()
