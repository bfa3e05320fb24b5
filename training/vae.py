"""Stage 1: a small KL autoencoder, 32x32x3 pixels <-> 16x16x4 latents.

Flat shapes are easy to compress, so a 0.17M-parameter VAE with a factor-2 downsampling
reconstructs them nearly exactly; the diffusion model then works on 16x16 latents.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from diffusers import AutoencoderKL

from training.common import Progress, lr_at
from training.data import batch

STEPS = 1000
BATCH = 64
LR = 2e-3
KL_WEIGHT = 1e-6  # as Stable Diffusion's VAE: latents stay close to a plain code


def build_vae() -> Any:  # diffusers' models are untyped for mypy
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )


def train_vae(rng: random.Random, device: str, steps: int = STEPS) -> Any:
    vae = build_vae().to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0.0)
    progress = Progress("vae", steps, every=100)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, LR, warmup=50)
        _, _, pixels = batch(rng, BATCH)
        pixels = pixels.to(device)
        posterior = vae.encode(pixels).latent_dist
        recon = vae.decode(posterior.sample()).sample
        err = recon - pixels
        loss = err.abs().mean() + err.pow(2).mean() + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress(step, loss=loss.item())
    vae.eval().requires_grad_(False)
    set_scaling_factor(vae, rng, device)
    return vae


@torch.no_grad()
def set_scaling_factor(vae: Any, rng: random.Random, device: str) -> None:
    """Scale latents to unit variance, as Stable Diffusion's 0.18215 does for its VAE."""
    _, _, pixels = batch(rng, 2048)
    latents = vae.encode(pixels.to(device)).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
