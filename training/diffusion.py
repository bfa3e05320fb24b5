"""Stage 3: the UNet and its text encoder, trained together on the VAE's latents.

Epsilon prediction on a 1000-step linear schedule (DDPM's), Min-SNR loss weighting (gamma 5)
for faster convergence, and condition dropout: one caption in ten is replaced by the empty
prompt, so the same network also learns the unconditional prediction that classifier-free
guidance extrapolates away from. Samples come from an EMA of the weights.
"""

from __future__ import annotations

import random
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from training.clip import WIDTH, text_config
from training.common import Ema, Progress, lr_at
from training.data import batch

STEPS = 4500
BATCH = 64
LR = 1e-3
P_UNCONDITIONAL = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.999
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "beta_schedule": "linear",
}


def build_unet() -> Any:  # diffusers' models are untyped for mypy
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=WIDTH,
        attention_head_dim=4,
        norm_num_groups=16,
    )


def build_text_encoder(tokenizer: Any) -> Any:
    return CLIPTextModel(text_config(tokenizer, layers=2))


def inference_scheduler() -> DDIMScheduler:
    """DDIM over the training schedule; trailing spacing starts sampling from pure noise."""
    return DDIMScheduler(
        **SCHEDULE,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="trailing",
    )


def train_diffusion(
    vae: Any, tokenizer: Any, rng: random.Random, device: str, steps: int = STEPS
) -> tuple[Any, Any]:
    unet = build_unet().to(device).train()
    text_encoder = build_text_encoder(tokenizer).to(device).train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
    ema_unet, ema_text = Ema(unet, EMA_DECAY), Ema(text_encoder, EMA_DECAY)
    noise_schedule: Any = DDPMScheduler(**SCHEDULE)
    alphas = noise_schedule.alphas_cumprod.to(device)
    gen = torch.Generator(device).manual_seed(rng.randrange(2**31))
    scale = vae.config.scaling_factor
    progress = Progress("diffusion", steps, every=100)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, LR, warmup=200)
        _, captions, pixels = batch(rng, BATCH)
        captions = ["" if rng.random() < P_UNCONDITIONAL else c for c in captions]
        with torch.no_grad():
            latents = vae.encode(pixels.to(device)).latent_dist.sample(gen) * scale
        tokens = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt")
        # As the pipeline calls it: no attention mask, the last hidden state is the context.
        context = text_encoder(tokens["input_ids"].to(device))[0]
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (BATCH,), generator=gen, device=device)
        noisy = noise_schedule.add_noise(latents, noise, t)
        predicted = unet(noisy, t, context).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
        loss = (weight * F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_text.update(text_encoder, step)
        progress(step, loss=loss.item())
    return ema_unet.model, ema_text.model
