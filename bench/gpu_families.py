"""Seconds per image and peak memory of full-size SDXL, SD3-medium, FLUX.1-dev, Janus-Pro-1B and
Janus-Pro-7B architectures.

Each architecture is built from its published configuration (written below) with random
weights, directly on the device: nothing is downloaded. Tokenizers are built offline (byte-level
CLIP BPE, character-level T5, word-level for Janus), so prompts tokenize differently from the
real models, which does not change the work done: diffusion sequence lengths are padded to the
same fixed lengths, and a Janus prompt's few tokens are next to nothing beside the 576 image
tokens each image draws. Every run goes through the worker's own path at the model's native
resolution, as the worker runs a job: a diffusion model through its worker/families/ adapter
(`Generator`), Janus-Pro through `TokenGenerator` (worker/autoregressive.py) with guidance on,
all of a call's candidates in one generate call. Random weights make noise images, and fp16 may
overflow to NaN in places; neither changes the time or memory a step takes.

Diffusion rows report denoising steps and seconds per image; token rows report image tokens
per image, images per second and image tokens per second (candidates x tokens per image over the
call's seconds; each token step also scores the unconditional rows, so the model runs twice
that many rows).

    .venv/bin/python bench/gpu_families.py [--family sdxl sd3 flux janus-pro-1b janus-pro-7b]
        [--images 1 4 16] [--repeats 2] [--write docs/benchmarks.md]
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

# Janus-Pro (deepseek-ai/Janus-Pro-1B and -7B, transformers' JanusConfig field names). Both share
# the SigLIP-L understanding tower and the VQ-16 tokenizer; the Llama LM differs. The published
# checkpoints store lm_head apart from the input embeddings (7B: 14.84 GB in bf16 = 7.4 B).
JANUS_PRO_1B_LM = dict(
    model_type="llama",
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=102400,
    max_position_embeddings=16384,
    tie_word_embeddings=False,
)
JANUS_PRO_7B_LM = {
    **JANUS_PRO_1B_LM,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
}
SIGLIP_L = dict(  # the understanding tower: built, unused by text-to-image
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    mlp_ratio=4.0,
    image_size=384,
    patch_size=16,
    num_image_tokens=576,  # (384 // 16) ** 2: the tokens generate draws per image
)
VQ_16 = dict(  # 16384 codes of 8 dims; the VQ grid is image_size // patch_size = 24
    embed_dim=8,
    num_embeddings=16384,
    latent_channels=256,
    base_channels=128,
    channel_multiplier=(1, 1, 2, 2, 4),  # 16x upsampling: 24 x 16 = 384 px
    num_res_blocks=2,
)
JANUS_GUIDANCE = 5.0  # Janus-Pro's generation_config default

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
    "janus_lm": dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
        max_position_embeddings=128,
    ),
    # a 4x4 grid of tokens: 16 per image, decoded by the same 5 VQ levels to 64 px
    "janus_vision": dict(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=16,
        patch_size=4,
        num_image_tokens=16,
    ),
    "janus_vq": dict(num_embeddings=64, latent_channels=8, base_channels=32, num_res_blocks=1),
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


def _janus_pro(b: Build, lm: dict[str, Any], name: str) -> Any:
    """A Janus-Pro model with an offline word-level tokenizer and its processor, wrapped as the
    worker wraps a loaded one (the tokenizer's few ids sit inside the LM's larger vocabulary)."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
    )

    from tests.tiny_models import _janus_tokenizer
    from worker.autoregressive import TokenGenerator
    from worker.families.janus import Janus

    tok = _janus_tokenizer()
    text = b.cfg(lm, "janus_lm")
    vision = b.cfg(SIGLIP_L, "janus_vision")
    hidden = text["hidden_size"]  # image generation feeds both projections to the LM
    config = JanusConfig(
        text_config={
            **text,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        vision_config={**vision, "projection_dim": hidden},
        vq_config={
            **b.cfg(VQ_16, "janus_vq"),
            "projection_dim": hidden,
            "image_token_embed_dim": hidden,
        },
        image_token_id=tok.convert_tokens_to_ids("<image_placeholder>"),
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    model = b.make(lambda: JanusForConditionalGeneration(config))
    settings = model.generation_config  # what Janus-Pro's generation_config.json holds
    settings.generation_kwargs = {"boi_token_id": tok.convert_tokens_to_ids("<begin_of_image>")}
    settings.guidance_scale = JANUS_GUIDANCE
    settings.pad_token_id = tok.pad_token_id
    side = vision["image_size"]
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(
            size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tok,
        num_image_tokens=vision["num_image_tokens"],
    )
    return TokenGenerator(model, processor, family=Janus(), model_name=name)


def build_janus_pro_1b(b: Build) -> Any:
    return _janus_pro(b, JANUS_PRO_1B_LM, "janus-pro-1b")


def build_janus_pro_7b(b: Build) -> Any:
    return _janus_pro(b, JANUS_PRO_7B_LM, "janus-pro-7b")


@dataclass(frozen=True)
class Arch:
    name: str
    label: str
    build: Callable[[Build], Any]
    steps: int  # the steps the published figures we compare with use
    dtype: str  # the dtype it is usually served in


@dataclass(frozen=True)
class TokenArch:
    """A token model: its build returns a `TokenGenerator`; no steps, a fixed size."""

    name: str
    label: str
    build: Callable[[Build], Any]
    dtype: str


ARCHES: dict[str, Arch | TokenArch] = {
    a.name: a
    for a in (
        Arch("sdxl", "SDXL base 1.0", build_sdxl, 30, "float16"),
        Arch("sd3", "SD3-medium", build_sd3, 28, "bfloat16"),
        Arch("flux", "FLUX.1-dev", build_flux, 28, "bfloat16"),
        TokenArch("janus-pro-1b", "Janus-Pro-1B", build_janus_pro_1b, "bfloat16"),
        TokenArch("janus-pro-7b", "Janus-Pro-7B", build_janus_pro_7b, "bfloat16"),
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


def _time_calls(
    call: Callable[[int], None], *, device: str, images: list[int], repeats: int
) -> list[tuple[int, float, float]]:
    """(images per call, median seconds per call, peak GiB) for each batch size."""
    import torch

    out = []
    for n in images:
        times = []
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            call(n)
            _sync(device)
            times.append(time.perf_counter() - t)
        out.append((n, statistics.median(times), _peak_gib(device)))
    return out


def _dtype(arch: Arch | TokenArch, dtype_name: str | None, smoke: bool) -> Any:
    import torch

    return getattr(torch, dtype_name or (arch.dtype if not smoke else "float32"))


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
    from worker.generation import GenerationRequest, Generator

    dtype = _dtype(arch, dtype_name, smoke)
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
    timed = _time_calls(
        lambda n: generate(n, n_steps), device=device, images=images, repeats=repeats
    )
    return [
        dict(
            arch=arch.label,
            pipeline=caps.pipeline_class,
            dtype=str(dtype).split(".")[-1],
            size=f"{width}x{height}",
            steps=n_steps,
            images=n,
            seconds=seconds / n,
            peak=peak,
            params=billions,
            build=build_seconds,
        )
        for n, seconds, peak in timed
    ]


def run_token_arch(
    arch: TokenArch,
    *,
    device: str,
    dtype_name: str | None,
    smoke: bool,
    images: list[int],
    repeats: int,
) -> list[dict[str, Any]]:
    """The TokenGenerator's own path: one request of n candidates (seeds 0..n-1) is one generate
    call of n rows (2n with the unconditional ones), guidance on, decoded to images."""
    from worker.generation import GenerationRequest

    dtype = _dtype(arch, dtype_name, smoke)
    started = time.perf_counter()
    generator = arch.build(Build(device=device, dtype=dtype, smoke=smoke))
    build_seconds = time.perf_counter() - started
    caps = generator.capabilities
    side, tokens = caps.native_width, caps.image_tokens
    billions = sum(p.numel() for p in generator.model.parameters()) / 1e9

    def generate(n: int) -> None:
        request = GenerationRequest.of(
            PROMPT, tuple(range(n)), width=side, height=side, guidance_scale=JANUS_GUIDANCE
        )
        generator.generate([request])

    generate(1)  # warm-up: kernels, allocator, lazy initialisation
    return [
        dict(
            arch=arch.label,
            pipeline=caps.pipeline_class,
            dtype=str(dtype).split(".")[-1],
            size=f"{side}x{side}",
            tokens=tokens,
            images=n,
            seconds=seconds / n,
            images_per_s=n / seconds,
            tokens_per_s=n * tokens / seconds,
            peak=peak,
            params=billions,
            build=build_seconds,
        )
        for n, seconds, peak in _time_calls(generate, device=device, images=images, repeats=repeats)
    ]


def _memory(device: str) -> str:
    return "peak GPU GiB" if device.startswith("cuda") else "peak RSS GiB"


def table(rows: list[dict[str, Any]], *, device: str) -> str:
    lines = [
        f"| model | pipeline | dtype | size | steps | images/call | s/image | {_memory(device)} "
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


def token_table(rows: list[dict[str, Any]], *, device: str) -> str:
    """Token models: image tokens per image instead of steps, and throughput in images and
    image tokens per second."""
    lines = [
        "| model | class | dtype | size | tokens/image | images/call | s/image | images/s "
        f"| tokens/s | {_memory(device)} | params (B) | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arch']} | {r['pipeline']} | {r['dtype']} | {r['size']} | {r['tokens']} "
            f"| {r['images']} | {r['seconds']:.3f} | {r['images_per_s']:.2f} "
            f"| {r['tokens_per_s']:.0f} | {r['peak']:.1f} | {r['params']:.2f} "
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
    import transformers

    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_properties(torch.device(device))
        where = f"{gpu.name}, {gpu.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        where = f"CPU only ({platform.processor() or platform.machine()})"
    return (
        f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", choices=list(ARCHES), default=list(ARCHES))
    parser.add_argument("--images", nargs="+", type=int, default=[1], help="images per call")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=None, help="default: the model's usual (diffusion only)"
    )
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
    token_rows: list[dict[str, Any]] = []
    for name in args.family:
        arch = ARCHES[name]
        if isinstance(arch, TokenArch):
            token_rows += run_token_arch(
                arch,
                device=device,
                dtype_name=args.dtype,
                smoke=smoke,
                images=args.images,
                repeats=args.repeats,
            )
        else:
            rows += run_arch(
                arch,
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
    tables = [table(rows, device=device)] if rows else []
    tables += [token_table(token_rows, device=device)] if token_rows else []
    report = (
        f"### {title}\n\nMachine: {machine(device)}\n\nCommand: `{' '.join(sys.argv)}`\n\n"
        + "\n\n".join(tables)
        + "\n"
    )
    publish(report, args.write, smoke=smoke)


if __name__ == "__main__":
    main()
