"""Tiny random-weight builds of every diffusers family Daikon serves, made offline from configs.

Each builder returns a pipeline object; `FamilyBuilds` saves it with `save_pretrained` into a
folder once per test session, so tests load it back through `AutoPipelineForText2Image` exactly
as the worker does. The shapes follow diffusers' own dummy components, with two deliberate
differences: every VAE has four blocks (scale factor 8, as the published models have) so the
size multiples under test are the real ones (8, 16, 64), and the tokenizers are built here
(byte-level CLIP BPE, a character-level T5 unigram) because nothing can be downloaded.
Weights are random: images are noise. These prove plumbing, not quality.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daikon.capabilities import ModelOptions
from tests.tiny_models import _text_config
from tests.tiny_models import _tokenizer as clip_tokenizer

if TYPE_CHECKING:
    from worker.generation import Generator

SEED = 0
BUILD_MARKER = "daikon-family.json"
BUILD_VERSION = 1


# --- shared parts -------------------------------------------------------------------------


def t5_tokenizer():  # type: ignore[no-untyped-def]
    """A character-level unigram T5 tokenizer: no sentencepiece model, nothing downloaded."""
    from transformers import T5Tokenizer

    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    vocab += [(c, -2.0) for c in chars] + [("\u2581" + c, -1.5) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def t5_encoder(tokenizer: Any, d_model: int = 32):  # type: ignore[no-untyped-def]
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(SEED)
    return T5EncoderModel(config).eval()


def clip_text(tokenizer: Any, *, projection: bool = False, hidden: int = 32):  # type: ignore[no-untyped-def]
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = _text_config(tokenizer, hidden=hidden)
    config.projection_dim = hidden
    torch.manual_seed(SEED)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def vae(latent_channels: int = 4, *, flow: bool = False):  # type: ignore[no-untyped-def]
    """Four blocks, like the published VAEs: a scale factor of 8."""
    import torch
    from diffusers import AutoencoderKL

    extra: dict[str, Any] = {}
    if flow:  # SD3 and Flux: no quant convs, a shift factor
        extra = dict(
            use_quant_conv=False,
            use_post_quant_conv=False,
            shift_factor=0.0609,
            scaling_factor=1.5035,
        )
    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        **extra,
    )


def sd_unet(**overrides: Any):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import UNet2DConditionModel

    config: dict[str, Any] = dict(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,  # native 64 px with the VAE's factor 8
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=16,
    )
    config.update(overrides)
    torch.manual_seed(SEED)
    return UNet2DConditionModel(**config)


def _sd_scheduler_config() -> dict[str, Any]:
    return dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
    )


# --- the families ---------------------------------------------------------------------------


def build_sd1():  # type: ignore[no-untyped-def]
    """SD 1.x: epsilon prediction, PNDM (SD 1.5's own default, a multi-order scheduler)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = clip_tokenizer()
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip_text(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(),
        scheduler=PNDMScheduler(
            **_sd_scheduler_config(), skip_prk_steps=True, set_alpha_to_one=False
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sd2():  # type: ignore[no-untyped-def]
    """SD 2.x: v-prediction with DDIM, linear projections in the attention blocks."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = clip_tokenizer()
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=clip_text(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(use_linear_projection=True, attention_head_dim=(2, 4)),
        scheduler=DDIMScheduler(
            **_sd_scheduler_config(),
            prediction_type="v_prediction",
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _sdxl(scheduler: Any):  # type: ignore[no-untyped-def]
    from diffusers import StableDiffusionXLPipeline

    tokenizer = clip_tokenizer()
    unet = sd_unet(
        layers_per_block=1,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,  # both text encoders' hidden states, concatenated
        norm_num_groups=1,
    )
    return StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=clip_text(tokenizer),
        text_encoder_2=clip_text(tokenizer, projection=True),
        tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def build_sdxl():  # type: ignore[no-untyped-def]
    from diffusers import EulerDiscreteScheduler

    return _sdxl(EulerDiscreteScheduler(**_sd_scheduler_config(), timestep_spacing="leading"))


def build_sdxl_turbo():  # type: ignore[no-untyped-def]
    """SDXL-Turbo's layout: SDXL with Euler ancestral, trailing spacing; guidance 0 by config."""
    from diffusers import EulerAncestralDiscreteScheduler

    return _sdxl(
        EulerAncestralDiscreteScheduler(**_sd_scheduler_config(), timestep_spacing="trailing")
    )


def build_lcm():  # type: ignore[no-untyped-def]
    """LCM as diffusers loads LCM_Dreamshaper: its own pipeline, a guidance-embedding UNet."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    tokenizer = clip_tokenizer()
    return LatentConsistencyModelPipeline(
        vae=vae(),
        text_encoder=clip_text(tokenizer),
        tokenizer=tokenizer,
        unet=sd_unet(time_cond_proj_dim=32),
        scheduler=LCMScheduler(**_sd_scheduler_config(), clip_sample=False, set_alpha_to_one=True),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def build_sd3():  # type: ignore[no-untyped-def]
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    torch.manual_seed(SEED)
    transformer = SD3Transformer2DModel(
        sample_size=8,  # latent side: native 64 px
        patch_size=2,  # as SD3's: size multiple 8 x 2 = 16
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,  # T5's width; the two CLIPs (32 + 32) are padded up to it
        pooled_projection_dim=64,  # both CLIPs' pooled outputs, concatenated
        out_channels=4,
        pos_embed_max_size=8,  # 8 patches x 2 x 8 = at most 128 px a side
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae(flow=True),
        text_encoder=clip_text(tokenizer, projection=True),
        tokenizer=tokenizer,
        text_encoder_2=clip_text(clip_tokenizer(), projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(t5_tok, d_model=64),
        tokenizer_3=t5_tok,
    )


def _flux(*, guidance_embeds: bool):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = clip_tokenizer()
    t5_tok = t5_tokenizer()
    torch.manual_seed(SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2 x 2: size multiple 8 x 2 = 16
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=guidance_embeds,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=guidance_embeds,  # dev shifts by resolution, schnell does not
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae(flow=True),
        text_encoder=clip_text(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(t5_tok),
        tokenizer_2=t5_tok,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )


def build_flux_dev():  # type: ignore[no-untyped-def]
    return _flux(guidance_embeds=True)


def build_flux_schnell():  # type: ignore[no-untyped-def]
    return _flux(guidance_embeds=False)


def _pixart(pipeline_cls: Any):  # type: ignore[no-untyped-def]
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    t5_tok = t5_tokenizer()
    torch.manual_seed(SEED)
    transformer = PixArtTransformer2DModel(
        sample_size=8,  # latent side: native 64 px
        num_layers=2,
        patch_size=2,  # size multiple 8 x 2 = 16
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,  # learned sigma, as PixArt's
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    return pipeline_cls(
        tokenizer=t5_tok,
        text_encoder=t5_encoder(t5_tok),
        vae=vae(),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000
        ),
    )


def build_pixart_alpha():  # type: ignore[no-untyped-def]
    from diffusers import PixArtAlphaPipeline

    return _pixart(PixArtAlphaPipeline)


def build_pixart_sigma():  # type: ignore[no-untyped-def]
    from diffusers import PixArtSigmaPipeline

    return _pixart(PixArtSigmaPipeline)


def build_kandinsky22_prior():  # type: ignore[no-untyped-def]
    """The DALL-E 2 prior: text -> a CLIP image embedding."""
    import torch
    from diffusers import KandinskyV22PriorPipeline, PriorTransformer, UnCLIPScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer = clip_tokenizer()
    torch.manual_seed(SEED)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=12, embedding_dim=32, num_layers=1
    )
    # clip_std starts at 0, which would make every embedding 0: the published prior's is not.
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # type: ignore[attr-defined]
    torch.manual_seed(SEED)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            image_size=32,
            projection_dim=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=4,
        )
    ).eval()
    return KandinskyV22PriorPipeline(
        prior=prior,
        image_encoder=image_encoder,
        text_encoder=clip_text(tokenizer, projection=True),
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        image_processor=CLIPImageProcessor(
            crop_size=32, size=32, do_center_crop=True, do_normalize=True, do_resize=True
        ),
    )


def build_kandinsky22_decoder():  # type: ignore[no-untyped-def]
    """The decoder: a UNet conditioned on the image embedding, drawn by a 4-block MoVQ."""
    import torch
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, VQModel

    unet = sd_unet(
        out_channels=8,  # mean and variance
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        encoder_hid_dim=32,
        encoder_hid_dim_type="image_proj",
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        norm_num_groups=32,
    )
    torch.manual_seed(SEED)
    movq = VQModel(
        block_out_channels=[32, 32, 32, 32],  # scale 8: sides a multiple of 8 x 8 = 64
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    )
    scheduler = DDPMScheduler(
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        num_train_timesteps=1000,
        prediction_type="epsilon",
        steps_offset=1,
    )
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


def build_kandinsky22():  # type: ignore[no-untyped-def]
    """The combined prior + decoder pipeline, saved as one folder."""
    from diffusers import KandinskyV22CombinedPipeline

    prior, decoder = build_kandinsky22_prior(), build_kandinsky22_decoder()
    return KandinskyV22CombinedPipeline(
        unet=decoder.unet,
        scheduler=decoder.scheduler,
        movq=decoder.movq,
        prior_prior=prior.prior,
        prior_image_encoder=prior.image_encoder,
        prior_text_encoder=prior.text_encoder,
        prior_tokenizer=prior.tokenizer,
        prior_scheduler=prior.scheduler,
        prior_image_processor=prior.image_processor,
    )


def save_kandinsky22_hub_layout(out: Path) -> Path:
    """The Hub's layout: a decoder repo whose model card names its prior (`prior: [...]`).

    diffusers maps the decoder's `KandinskyV22Pipeline` to the combined pipeline and, because
    that class sets `_load_connected_pipes`, loads the repos the decoder's README.md lists under
    `prior` (CONNECTED_PIPES_KEYS) into the `prior_*` components.
    """
    prior_dir, decoder_dir = out / "kandinsky22-prior", out / "kandinsky22-hub"
    build_kandinsky22_prior().save_pretrained(prior_dir, safe_serialization=True)
    build_kandinsky22_decoder().save_pretrained(decoder_dir, safe_serialization=True)
    (decoder_dir / "README.md").write_text(
        f"---\nprior:\n- {json.dumps(str(prior_dir.resolve()))}\n---\nKandinsky 2.2 decoder.\n"
    )
    return decoder_dir


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A tiny build and what the published model it mimics can do (what tests expect)."""

    name: str
    build: Callable[[], Any] | None  # None: `save` writes the folder itself
    pipeline_class: str  # what AutoPipelineForText2Image must load
    multiple: int  # the published model's size multiple
    guidance: str  # cfg | distilled | none
    negative: bool  # a negative prompt does something
    true_cfg: bool = False
    options: ModelOptions = field(default_factory=ModelOptions)
    save: Callable[[Path], Path] | None = None


_KANDINSKY = dict(
    pipeline_class="KandinskyV22CombinedPipeline",
    multiple=64,
    guidance="cfg",
    negative=True,
    options=ModelOptions(prior_steps=2),  # the prior's 25 default steps, cut for speed
)
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("sd1", build_sd1, "StableDiffusionPipeline", 8, "cfg", True),
        Family("sd2", build_sd2, "StableDiffusionPipeline", 8, "cfg", True),
        Family("sdxl", build_sdxl, "StableDiffusionXLPipeline", 8, "cfg", True),
        Family(
            "sdxl-turbo",
            build_sdxl_turbo,
            "StableDiffusionXLPipeline",
            8,
            "none",
            False,
            # What a deployment's model table says for a turbo checkpoint.
            options=ModelOptions(guidance="none", default_steps=1, max_steps=4),
        ),
        Family("lcm", build_lcm, "LatentConsistencyModelPipeline", 8, "distilled", False),
        Family("sd3", build_sd3, "StableDiffusion3Pipeline", 16, "cfg", True),
        Family("flux-dev", build_flux_dev, "FluxPipeline", 16, "distilled", True, True),
        Family("flux-schnell", build_flux_schnell, "FluxPipeline", 16, "none", True, True),
        Family("pixart-alpha", build_pixart_alpha, "PixArtAlphaPipeline", 16, "cfg", True),
        Family("pixart-sigma", build_pixart_sigma, "PixArtSigmaPipeline", 16, "cfg", True),
        Family("kandinsky22", build_kandinsky22, **_KANDINSKY),  # type: ignore[arg-type]
        Family(
            "kandinsky22-hub",
            None,
            save=save_kandinsky22_hub_layout,
            **_KANDINSKY,  # type: ignore[arg-type]
        ),
    )
}


class FamilyBuilds:
    """Saved folders of the tiny families under one root, each built on first use."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        family = FAMILIES[name]
        target = self.root / ("kandinsky22-hub" if family.save else name)
        marker = target / BUILD_MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("version") == BUILD_VERSION:
            return target
        if family.save is not None:
            family.save(self.root)
        else:
            assert family.build is not None
            family.build().save_pretrained(target, safe_serialization=True)
        marker.write_text(json.dumps({"version": BUILD_VERSION, "seed": SEED}))
        return target


# --- driving the builds through the adapter (the worker's tests) ----------------------------


class Adapters:
    """Adapters over the session's builds, loaded once per (family, options)."""

    def __init__(self, builds: FamilyBuilds):
        self.builds = builds
        self._loaded: dict[tuple[str, tuple[tuple[str, Any], ...]], Generator] = {}

    def __call__(self, name: str, images_per_call: int | None = None, **options: Any) -> Generator:
        key = (name, tuple(sorted({**options, "_per_call": images_per_call}.items())))
        if key not in self._loaded:
            import torch

            from worker.generation import Generator

            family = FAMILIES[name]
            self._loaded[key] = Generator.load(
                str(self.builds.path(name)),
                model=name,
                device="cpu",
                dtype=torch.float32,
                options=family.options.model_copy(update=options),
                images_per_call=images_per_call,
            )
        return self._loaded[key]


def size_for(family: Family) -> tuple[int, int]:
    """A non-square size on the family's multiple (so swapped axes would show)."""
    m = family.multiple
    return (3 * m, 2 * m) if m == 8 else (2 * m, m)


class Progress:
    """A step callback that records (step, total) and can stop the run at a step, as a
    cancel does."""

    def __init__(self, stop_at: int | None = None):
        self.seen: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, step: int, total: int) -> None:
        self.seen.append((step, total))
        if step == self.stop_at:
            raise Stop(step)

    def assert_complete(self) -> int:
        """Steps 1..total in order, one total throughout; returns the total."""
        totals = {t for _, t in self.seen}
        assert len(totals) == 1, self.seen
        total = totals.pop()
        assert [s for s, _ in self.seen] == list(range(1, total + 1))
        return total


class Stop(Exception):
    """What a cancel does: the step callback raises."""
