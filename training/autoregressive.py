"""`make train-ar`: shapes-ar, a tiny Janus (DALL-E 1 style) token model of the shapes world.

A VQ-VAE turns a 32x32 scene into 8x8 = 64 codebook tokens; a small Llama then reads the
caption (<bos> words <begin_of_image>) and predicts the image tokens one by one, exactly as
`JanusForConditionalGeneration.generate(generation_mode="image")` feeds them. Both live in one
JanusForConditionalGeneration, so the serving family loads it like any Janus checkpoint.

python -m training.autoregressive --out models              # models/shapes-ar, minutes on 2 cores
python -m training.autoregressive --out /tmp/m --scale 0.01  # a smoke run
python -m training.autoregressive --check models/shapes-ar   # oracle match rates of samples
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    AutoProcessor,
    CLIPModel,
    CLIPProcessor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessorPil,
    JanusProcessor,
    PreTrainedTokenizerFast,
)

from shapeworld.captions import Spec, varied_caption, words
from shapeworld.oracle import judge
from shapeworld.prompts import eval_prompts
from shapeworld.world import SIZE
from training import clip
from training.common import RECORD, Ema, Progress, device, lr_at, seeded, training_record
from training.data import batch

SEED = 20261126
DIR = "shapes-ar"
RANKER_DIR = "shapes-ar-clip"
BASE_CLIP = Path(__file__).resolve().parents[1] / "models" / "shapes-clip"
SPECIALS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<image_placeholder>",
    "<begin_of_image>",
    "<end_of_image>",
)
GRID = 8  # image tokens per side: 32 px / 4
PATCH = SIZE // GRID
CODEBOOK = 512
CODE_DIM = 8  # Janus's own: l2-normalised 8-d codes use the codebook evenly
HIDDEN = 128
LAYERS = 4
HEADS = 4
GUIDANCE = 4.0  # the saved default; see --check
# The saved default temperature: on the held-out prompts 0.7 beat 1.0 for one sample (61% vs
# 57% of singles) and for CLIP's pick of 64 (83% vs 75%) at guidance 4 (docs/quality.md).
TEMPERATURE = 0.7

VQ_STEPS = 3000  # reconstructions read right: 67% after 500 steps, 88% after 1500, 94% after 3000
VQ_BATCH = 32
VQ_LR = 4e-3
COMMIT = 0.25
OBJECT_WEIGHT = 4.0

LM_STEPS = 3000  # final loss 1.57 after 1500 steps, 1.19 after 3000
LM_BATCH = 64
LM_LR = 2e-3
P_UNCONDITIONAL = 0.1
EMA_DECAY = 0.995
POOL = 32768  # scenes; each is seen about six times, captioned anew each time

# The ranker: shapes-clip learnt rendered scenes, and the tokenizer's decodings look otherwise
# (softer corners, shifted colours), so CLIP chose wrong among right samples. A short
# fine-tune shows it half of every batch through this model's own encode-decode round trip,
# captioned as rendered: no sample and no oracle verdict is used.
RANKER_STEPS = 400
RANKER_LR = 3e-4
RANKER_SHARE = 0.5


# ------------------------------------------------------------------------------------ processor
def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per shapes-world word; <bos> first, as the Llama tokenizer of real Janus does
    (the unconditional rows of classifier-free guidance keep only <bos> and <begin_of_image>)."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *words()])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # as shapeworld.captions.parse reads what people type: any case, punctuation ignored
    tk.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(r"[^a-z<>_ ]+"), " ")]
    )
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        # JanusProcessor reads tokenizer.image_token / .boi_token / .eoi_token
        extra_special_tokens={
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> JanusProcessor:
    images = JanusImageProcessorPil(
        size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return JanusProcessor(image_processor=images, tokenizer=tokenizer, num_image_tokens=GRID * GRID)


# ------------------------------------------------------------------------------------ model
def build_model(tokenizer: PreTrainedTokenizerFast) -> JanusForConditionalGeneration:
    """The SigLIP tower and its aligner only serve image understanding: tiny and untrained."""
    config = JanusConfig(
        text_config={
            "model_type": "llama",
            "vocab_size": len(tokenizer),
            "hidden_size": HIDDEN,
            "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "num_key_value_heads": HEADS,
            "max_position_embeddings": 128,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        # image_size / patch_size sets the VQ grid, num_image_tokens how many tokens are drawn
        vision_config={
            "image_size": SIZE,
            "patch_size": PATCH,
            "num_image_tokens": GRID * GRID,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "projection_dim": HIDDEN,
        },
        vq_config={
            "embed_dim": CODE_DIM,
            "num_embeddings": CODEBOOK,
            "latent_channels": 32,
            "base_channels": 32,  # GroupNorm has 32 groups: the fewest channels possible
            "channel_multiplier": [1, 1, 1],  # 8x8 tokens, upsampled twice -> 32 px
            "num_res_blocks": 1,
            "projection_dim": HIDDEN,  # generation_aligner feeds the LM
            "image_token_embed_dim": HIDDEN,  # generation_head reads the LM
        },
        image_token_id=SPECIALS.index("<image_placeholder>"),  # the specials come first
    )
    model = JanusForConditionalGeneration(config)
    gc = model.generation_config
    boi = SPECIALS.index("<begin_of_image>")
    gc.generation_kwargs = {"boi_token_id": boi}  # type: ignore[attr-defined]  # read by generate
    gc.guidance_scale = GUIDANCE
    gc.temperature = TEMPERATURE  # Daikon's default for jobs that name none
    gc.do_sample = True  # a sampled model (a temperature without it is flagged at load)
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc._from_model_config = False  # else from_pretrained drops generation_kwargs
    return model


# ------------------------------------------------------------------------------------ VQ-VAE
def quantize(vq: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstruction, tokens, codebook + commitment loss), as `vq.decode(tokens)` sees codes.

    JanusVQVAE.forward decodes from the token indices, so no gradient reaches the encoder, and
    its quantizer matches unnormalised codes while `decode` l2-normalises them. Here codes and
    encodings are both l2-normalised (as LlamaGen, Janus's tokenizer, trains) with a
    straight-through gradient; a unit-norm codebook makes the library's own `encode` agree."""
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)  # (B, D, 8, 8)
    codes = F.normalize(vq.quantize.embedding.weight, dim=1)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    tokens = (flat @ codes.T).argmax(dim=1)
    zq = codes[tokens].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    loss = F.mse_loss(zq, z.detach()) + COMMIT * F.mse_loss(z, zq.detach())
    recon = vq.decoder(vq.post_quant_conv(z + (zq - z).detach()))
    return recon, tokens.view(z.shape[0], -1), loss


def train_vq(model: Any, rng: random.Random, dev: str, steps: int = VQ_STEPS) -> dict[str, float]:
    vq = model.model.vqmodel
    for module in vq.modules():  # torch's fan-in init: N(0, 0.02) trained slower here
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            module.reset_parameters()
    vq.train().requires_grad_(True)
    opt = torch.optim.AdamW(vq.parameters(), lr=VQ_LR, weight_decay=0.0)
    progress = Progress("vq", steps, every=50)
    used = torch.zeros(CODEBOOK, dtype=torch.bool, device=dev)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, VQ_LR, warmup=30)
        _, _, pixels = batch(rng, VQ_BATCH)
        pixels = pixels.to(dev)
        recon, tokens, vq_loss = quantize(vq, pixels)
        # objects cover a tenth of a scene: weighted up, their colours are learnt, not averaged
        weight = 1 + OBJECT_WEIGHT * (pixels < 0.99).any(dim=1, keepdim=True)
        err = (recon - pixels) * weight
        loss = err.abs().mean() + err.pow(2).mean() + vq_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[tokens.flatten()] = True
        if (step + 1) % 50 == 0 and step + 1 < steps * 0.8:
            _restart_dead_codes(vq, pixels, used)
            used.zero_()
        progress(step, loss=loss.item(), vq=vq_loss.item())
    with torch.no_grad():  # unit-norm codes: the library's unnormalised argmin then agrees
        vq.quantize.embedding.weight.copy_(F.normalize(vq.quantize.embedding.weight, dim=1))
    vq.eval().requires_grad_(False)
    return {"vq_loss": round(loss.item(), 4)}


@torch.no_grad()
def _restart_dead_codes(vq: Any, pixels: torch.Tensor, used: torch.Tensor) -> None:
    """Codes no encoding chose lately restart at random current encodings (else they stay dead)."""
    dead = (~used).nonzero().flatten()
    if len(dead) == 0:
        return
    z = F.normalize(vq.quant_conv(vq.encoder(pixels)), dim=1)
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    pick = torch.randint(0, flat.shape[0], (len(dead),), device=flat.device)
    vq.quantize.embedding.weight[dead] = flat[pick]


@torch.no_grad()
def encode(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """Image tokens (B, 64) of pixels in [-1, 1]."""
    return quantize(model.model.vqmodel, pixels)[1]


# ------------------------------------------------------------------------------------ LM
def caption_ids(
    processor: JanusProcessor, captions: list[str], rng: random.Random, dev: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded <bos> caption <begin_of_image>, as the processor builds prompts; a caption
    dropped for guidance keeps only <bos> and <begin_of_image>, as generate()'s
    unconditional rows do (every other token becomes <pad>, still attended)."""
    inputs = processor(text=captions, generation_mode="image", padding=True, return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    tok = processor.tokenizer
    keep = (ids == tok.bos_token_id) | (ids == tok.convert_tokens_to_ids(tok.boi_token))
    dropped = torch.tensor([rng.random() < P_UNCONDITIONAL for _ in captions])[:, None]
    ids = torch.where(dropped & ~keep, tok.pad_token_id, ids)
    return ids.to(dev), mask.to(dev)


def lm_loss(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor
) -> torch.Tensor:
    """Next image token cross-entropy over the prompt then the image tokens, embedded as
    generate() embeds them: text by the LM's table, image tokens by generation_aligner."""
    text = model.get_input_embeddings()(ids)
    image = model.prepare_embeddings_for_image_generation(image_tokens[:, :-1])
    embeds = torch.cat([text, image], dim=1)
    full_mask = torch.cat([mask, torch.ones_like(image_tokens[:, :-1])], dim=1)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=full_mask)
    logits = model.model.generation_head(hidden.last_hidden_state[:, ids.shape[1] - 1 :])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), image_tokens.reshape(-1))


def lm_parameters(model: Any) -> list[torch.nn.Parameter]:
    inner = model.model
    modules = [
        inner.language_model,
        inner.generation_embeddings,
        inner.generation_aligner,
        inner.generation_head,
    ]
    return [p for m in modules for p in m.parameters()]


@torch.no_grad()
def token_pool(model: Any, rng: random.Random, size: int) -> tuple[list[Spec], torch.Tensor]:
    """Training scenes encoded once: encoding every batch afresh would cost a quarter of the
    LM's time. Captions are still varied per use."""
    specs: list[Spec] = []
    tokens = []
    for start in range(0, size, 256):
        batch_specs, _, pixels = batch(rng, min(256, size - start))
        specs += batch_specs
        tokens.append(encode(model, pixels.to(model.device)))
    return specs, torch.cat(tokens)


def train_lm(
    model: Any, processor: JanusProcessor, rng: random.Random, dev: str, steps: int = LM_STEPS
) -> tuple[Any, dict[str, float]]:
    specs, pool = token_pool(model, rng, min(POOL, steps * LM_BATCH))
    model.requires_grad_(False)
    params = lm_parameters(model)
    for p in params:
        p.requires_grad_(True)
    model.model.language_model.train()
    opt = torch.optim.AdamW(params, lr=LM_LR, weight_decay=0.01, betas=(0.9, 0.95))
    ema = Ema(model, EMA_DECAY)
    progress = Progress("lm", steps, every=100)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, LM_LR, warmup=100)
        picks = [rng.randrange(len(specs)) for _ in range(LM_BATCH)]
        captions = [varied_caption(specs[i], rng) for i in picks]
        image_tokens = pool[picks]
        ids, mask = caption_ids(processor, captions, rng, dev)
        loss = lm_loss(model, ids, mask, image_tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(model, step)
        progress(step, loss=loss.item())
    return ema.model.eval(), {"lm_loss": round(loss.item(), 4)}


# ------------------------------------------------------------------------------------ ranker
def roundtrip_view(model: Any, share: float) -> Any:
    """The first `share` of a batch (pixels in [-1, 1], NCHW) as this tokenizer decodes it."""

    @torch.no_grad()
    def view(pixels: torch.Tensor) -> torch.Tensor:
        k = round(pixels.shape[0] * share)
        tokens = encode(model, pixels[:k].to(model.device))
        decoded = model.decode_image_tokens(tokens).float().cpu().permute(0, 3, 1, 2)
        return torch.cat([decoded.clamp(-1, 1), pixels[k:]])

    return view


def tune_ranker(
    model: Any, base: Path, rng: random.Random, dev: str, steps: int = RANKER_STEPS
) -> tuple[Any, CLIPProcessor]:
    """`base` (shapes-clip) fine-tuned to read this model's decodings as well as renders."""
    processor = CLIPProcessor.from_pretrained(base)
    start = CLIPModel.from_pretrained(base)
    ranker = clip.train_clip(
        processor.tokenizer,
        rng,
        dev,
        steps,
        start=start,
        view=roundtrip_view(model, RANKER_SHARE),
        lr=RANKER_LR,
        warmup=20,
        name="ranker",
    )
    return ranker, processor


# ------------------------------------------------------------------------------------ checks
def to_images(model: Any, tokens: torch.Tensor) -> list[Image.Image]:
    """NHWC decoder output in about [-1, 1] -> RGB images, as the serving family converts."""
    with torch.inference_mode():
        pixels = model.decode_image_tokens(tokens).float().cpu()
    array = ((pixels + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in array]


@torch.no_grad()
def reconstruction_rate(model: Any, rng: random.Random, n: int = 512) -> float:
    """Share of training-distribution scenes the oracle still reads right after encode->decode."""
    hits = 0
    for start in range(0, n, 128):
        _, captions, pixels = batch(rng, min(128, n - start))
        images = to_images(model, encode(model, pixels.to(model.device)))
        hits += sum(judge(c, img).match for c, img in zip(captions, images, strict=True))
    return hits / n


def sample(model: Any, processor: Any, prompt: str, seed: int, guidance: float) -> Image.Image:
    """One candidate the way a client gets it: manual_seed, then the built-in sampler."""
    inputs = processor(text=[prompt], generation_mode="image", padding=True, return_tensors="pt")
    torch.manual_seed(seed)
    tokens = model.generate(
        **inputs.to(model.device), generation_mode="image", do_sample=True, guidance_scale=guidance
    )
    return to_images(model, tokens)[0]


def check(
    folder: Path, guidances: list[float], n: int, prompts_limit: int | None = None
) -> dict[str, Any]:
    """Oracle match rate of one sample, and of any of N samples (the ceiling a perfect ranker
    reaches), for the one- and two-object evaluation prompts."""
    model = JanusForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    singles, pairs = eval_prompts()
    singles = singles[: len(singles) // 2]  # each one-object caption is listed twice
    if prompts_limit:
        singles, pairs = singles[:prompts_limit], pairs[:prompts_limit]
    report: dict[str, Any] = {}
    for guidance in guidances:
        for name, prompts in (("singles", singles), ("pairs", pairs)):
            first, any_of = 0, 0
            for i, prompt in enumerate(prompts):
                matches = [
                    judge(prompt, sample(model, processor, prompt, 1000 * i + s, guidance)).match
                    for s in range(n)
                ]
                first += matches[0]
                any_of += any(matches)
            key = f"g{guidance:g}_{name}"
            report[key] = {
                "one": round(first / len(prompts), 3),
                f"any_of_{n}": round(any_of / len(prompts), 3),
            }
            print(key, report[key], flush=True)
    return report


# ------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models"))
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the steps to run")
    parser.add_argument(
        "--check", type=Path, help="a trained folder: report match rates, no training"
    )
    parser.add_argument("--guidance", type=float, nargs="+", default=[GUIDANCE])
    parser.add_argument("--n", type=int, default=16, help="samples per prompt for any-of-N")
    parser.add_argument("--limit", type=int, help="at most this many prompts per kind")
    parser.add_argument("--record", action="store_true", help="add --check's figures to its record")
    parser.add_argument(
        "--base-clip", type=Path, default=BASE_CLIP, help="the CLIP the ranker is tuned from"
    )
    args = parser.parse_args()
    if args.check:
        torch.set_num_threads(1)  # batch-of-2 decode steps: more threads only contend
        report = check(args.check, args.guidance, args.n, args.limit)
        print(json.dumps(report, indent=2))
        if args.record:
            path = args.check / RECORD
            record = json.loads(path.read_text())
            record.setdefault("figures", {})["check"] = report
            path.write_text(json.dumps(record, indent=2) + "\n")
        return
    dev = device()
    steps = {
        "vq": max(1, round(VQ_STEPS * args.scale)),
        "lm": max(1, round(LM_STEPS * args.scale)),
        "ranker": max(1, round(RANKER_STEPS * args.scale)),
    }
    print(f"training on {dev} with {torch.get_num_threads()} threads: {steps}", flush=True)
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    seeded(SEED)
    model: Any = build_model(tokenizer)
    model.to(dev)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    figures = train_vq(model, seeded(SEED + 1), dev, steps["vq"])
    seconds["vq"] = time.perf_counter() - started
    scenes = max(64, round(512 * min(1.0, args.scale)))
    figures["reconstructions_read_right"] = round(
        reconstruction_rate(model, seeded(SEED + 9), scenes), 3
    )
    print(f"oracle reads {figures['reconstructions_read_right']:.1%} of reconstructions right")

    started = time.perf_counter()
    model, lm_figures = train_lm(model, processor, seeded(SEED + 2), dev, steps["lm"])
    seconds["lm"] = time.perf_counter() - started
    figures.update(lm_figures)

    started = time.perf_counter()
    ranker, ranker_processor = tune_ranker(
        model, args.base_clip, seeded(SEED + 3), dev, steps["ranker"]
    )
    seconds["ranker"] = time.perf_counter() - started

    record = training_record(SEED, steps, seconds, dev) | {"figures": figures}
    folder, ranker_folder = args.out / DIR, args.out / RANKER_DIR
    model.to("cpu").save_pretrained(folder)
    processor.save_pretrained(folder)
    ranker.to("cpu").save_pretrained(ranker_folder)
    ranker_processor.save_pretrained(ranker_folder)
    for out in (folder, ranker_folder):
        (out / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    print(f"saved {folder}, {ranker_folder}: {json.dumps(record['seconds'])}", flush=True)
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
