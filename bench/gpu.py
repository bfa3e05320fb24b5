"""Images per second of SD 1.5- and SDXL-shaped pipelines on a GPU, by batch size, dtype and
torch.compile, called directly and through the worker's cross-job batching: issue 14's GPU
benchmark, its ratios measured side by side in one run.

The pipelines are built from their published configurations with random weights
(bench/gpu_families.py's configurations and builders; nothing is downloaded).

- direct: `Generator.generate` with N seeds in one request (N images in one pipeline call), at
  N = 1, 2, 4, 8, in fp16 and bf16, with and without `ModelOptions(compile=True)` (the
  denoiser compiled in place, warmed up as `Generator.load` does);
- service: the pipeline saved to a folder and served by the whole stack (tests/stack.py: HTTP,
  Redis, a real Celery worker process, database, storage), a burst of compatible one-image
  jobs with cross-job batching on (the executor runs up to 8 jobs as one call) and off,
  counted from the end of the burst's first call (its first job starts alone on an empty
  queue, by design) to the end of its last.

Ratios: batched (direct x8) against unbatched (direct x1), target >= 1.8x on SD 1.5 shapes;
service batched against direct at the same batch size, target >= 0.95x.

    .venv/bin/python bench/gpu.py [--arch sd15 sdxl] [--dtype float16 bfloat16]
        [--compile off on] [--batches 1 2 4 8] [--rounds 3] [--service-arch sd15 sdxl]
        [--write docs/benchmarks.md]
    .venv/bin/python bench/gpu.py --cpu-smoke   # the same code path, tiny sizes, CPU, fp32

Without CUDA the script runs the CPU smoke (and says so): its figures measure nothing.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from gpu_families import (  # noqa: E402 - bench/ is not a package
    CLIP_L,
    PROMPT,
    SMOKE,
    VAE_SDXL,
    Build,
    _clip,
    _peak_gib,
    _sync,
    _vae,
    build_sdxl,
    machine,
    publish,
)

# --- SD 1.5 (runwayml/stable-diffusion-v1-5), the configuration gpu_families.py lacks --------

UNET_SD15 = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=8,
    cross_attention_dim=768,
)
VAE_SD15 = {**VAE_SDXL, "sample_size": 512, "scaling_factor": 0.18215, "force_upcast": False}
SMOKE_SD15_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=1,
    attention_head_dim=4,
    cross_attention_dim=32,
)


def build_sd15(b: Build) -> Any:
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from tests.tiny_models import _tokenizer as clip_tokenizer

    tok = clip_tokenizer()
    unet_cfg = {**UNET_SD15, **SMOKE_SD15_UNET} if b.smoke else dict(UNET_SD15)
    return StableDiffusionPipeline(
        vae=_vae(b, VAE_SD15),
        text_encoder=_clip(b, CLIP_L, "clip_l", tok, projection=False),
        tokenizer=tok,
        unet=b.make(lambda: UNet2DConditionModel(**unet_cfg)),
        scheduler=PNDMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            skip_prk_steps=True,
            set_alpha_to_one=False,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@dataclass(frozen=True)
class Arch:
    name: str
    label: str
    build: Any
    steps: int


ARCHES = {
    a.name: a
    for a in (
        Arch("sd15", "SD 1.5", build_sd15, 50),
        Arch("sdxl", "SDXL base 1.0", build_sdxl, 30),
    )
}
assert set(SMOKE) >= {"clip_l", "vae", "unet"}  # the smoke sizes gpu_families.py shares


# --- direct -----------------------------------------------------------------------------------


def timed(device: str, fn: Any) -> float:
    """Seconds of one call, with the device's queued work finished before and after."""
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def direct_rates(
    gen: Any, *, device: str, size: int, steps: int, batches: list[int], rounds: int
) -> dict[int, tuple[float, float]]:
    """Batch size -> (images per second, peak memory GiB) of N seeds in one request."""
    import torch

    from worker.generation import GenerationRequest

    def call(n: int) -> None:
        gen.generate(
            [
                GenerationRequest.of(
                    PROMPT,
                    tuple(range(n)),
                    width=size,
                    height=size,
                    steps=steps,
                    guidance_scale=7.5,
                )
            ]
        )

    out = {}
    for n in batches:
        call(n)  # warm-up at this batch size (a compiled denoiser may recompile for it)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds = statistics.median(timed(device, lambda n=n: call(n)) for _ in range(rounds))
        out[n] = (n / seconds, _peak_gib(device))
    return out


# --- through the service ----------------------------------------------------------------------


@contextmanager
def served(
    folder: Path,
    tmp: Path,
    redis_url: str,
    *,
    dtype: str,
    compile: bool,
    batch: bool,
    max_batch: int,
    threads: int,
) -> Iterator[Any]:
    """The whole stack serving the saved pipeline as its one model, batching on or off."""
    from daikon.capabilities import ModelOptions
    from daikon.limits import LimitOverrides
    from server.settings import EMBEDDED_CLIP, ModelSpec, Settings
    from tests.stack import running_stack

    queue = f"daikon-gpu-{os.getpid()}-{time.monotonic_ns()}"
    spec = ModelSpec(
        pipeline=str(folder),
        clip=EMBEDDED_CLIP,
        options=ModelOptions(dtype=dtype, compile=compile),  # type: ignore[arg-type]
        # Room for any size, and time for a compiled denoiser's recompilation at a new batch
        # size inside the warm-up burst's first jobs.
        limits=LimitOverrides(
            images_per_call=max_batch,
            max_job_cost=1e6,
            seconds_per_cost=60.0,
            tenant_queued_cost=1e9,
        ),
    )
    settings = Settings(
        data_dir=tmp / queue,
        redis_url=redis_url,
        queue=queue,
        models={"default": spec},
        admin_key="dk_bench_gpu",
        batch_jobs=batch,
        tenant_max_active_jobs=100_000,
        tenant_submits_per_minute=100_000,
        max_size=4096,
        torch_threads=threads,
    )
    with running_stack(settings, tmp) as s:
        yield s


def service_rate(s: Any, body: dict[str, Any], jobs: int) -> tuple[float, float]:
    """(images per second, mean batch size) of `jobs` one-image jobs queued while no worker
    runs, then drained by a fresh worker process (tests.stack `Stack.drain_queued`): timed
    from the first job's start to the last one's end, so every call is a full batch, which is
    the rate to hold against the direct call at the same batch size, and neither the submits
    nor the worker's model load (and compile warm-up) count."""
    seconds, done = s.drain_queued(
        [{**body, "prompt": f"{PROMPT} {i}", "seed": i} for i in range(jobs)], timeout=3600
    )
    return jobs / seconds, statistics.mean(int(j["metrics"].get("batch_size", 1)) for j in done)


# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, *, device: str, smoke: bool) -> list[dict[str, Any]]:
    import torch

    from daikon.capabilities import ModelOptions
    from tests.stack import a_redis
    from worker.generation import Generator

    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="daikon-gpu-bench-"))
    max_batch = max(args.batches)
    with a_redis() as redis_url:
        for name in args.arch:
            arch = ARCHES[name]
            for dtype_name in args.dtype:
                dtype = getattr(torch, dtype_name)
                pipe = arch.build(Build(device=device, dtype=dtype, smoke=smoke))
                pipe.set_progress_bar_config(disable=True)
                folder = tmp / f"{name}-{dtype_name}"
                serve = name in args.service_arch
                if serve:
                    pipe.save_pretrained(folder)  # what the service's worker loads
                size = 64 if smoke else Generator(pipe, device=device).capabilities.native_width
                steps = args.steps or (2 if smoke else arch.steps)
                # Uncompiled first: compiling is in place, there is no going back on this UNet.
                for compiled in sorted(args.compile, key=["off", "on"].index):
                    on = compiled == "on"
                    # The ModelOptions path: compiled in place (once: the same UNet stays
                    # compiled), then warmed up at the native size as Generator.load does.
                    gen = Generator(
                        pipe, model=name, device=device, options=ModelOptions(compile=on)
                    )
                    if on:
                        gen.warm_up()
                    rates = direct_rates(
                        gen,
                        device=device,
                        size=size,
                        steps=steps,
                        batches=args.batches,
                        rounds=args.rounds,
                    )
                    service: dict[str, tuple[float, float]] = {}
                    if serve:
                        body = {
                            "width": size,
                            "height": size,
                            "steps": steps,
                            "candidates": 1,
                            "top_k": 1,
                            "guidance_scale": 7.5,
                        }
                        for batch in (True, False):
                            with served(
                                folder,
                                tmp,
                                redis_url,
                                dtype=dtype_name,
                                compile=on,
                                batch=batch,
                                max_batch=max_batch,
                                threads=args.threads,
                            ) as s:
                                service["batched" if batch else "unbatched"] = service_rate(
                                    s, body, max_batch * args.rounds
                                )
                    rows.append(
                        dict(
                            arch=arch.label,
                            dtype=dtype_name,
                            compile=compiled,
                            size=f"{size}x{size}",
                            steps=steps,
                            rates=rates,
                            service=service,
                        )
                    )
                    print(f"{name} {dtype_name} compile={compiled}: done", flush=True)
                del pipe, gen
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
                torch._dynamo.reset()  # the next pipeline compiles afresh
    return rows


def table(rows: list[dict[str, Any]], batches: list[int], *, device: str) -> str:
    memory = "peak GPU GiB" if device.startswith("cuda") else "peak RSS GiB"
    head = " | ".join(f"x{n} img/s" for n in batches)
    lines = [
        f"| model | dtype | compile | size | steps | {head} | {memory} at x{batches[-1]} "
        "| service batched img/s (mean batch) | service unbatched img/s |",
        "|---|---|---|---|---|" + "---:|" * len(batches) + "---:|---:|---:|",
    ]
    for r in rows:
        rates, svc = r["rates"], r["service"]
        cells = " | ".join(f"{rates[n][0]:.2f}" for n in batches)
        b, u = svc.get("batched"), svc.get("unbatched")
        lines.append(
            f"| {r['arch']} | {r['dtype']} | {r['compile']} | {r['size']} | {r['steps']} "
            f"| {cells} | {rates[batches[-1]][1]:.1f} "
            f"| {f'{b[0]:.2f} ({b[1]:.1f})' if b else '-'} | {f'{u[0]:.2f}' if u else '-'} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], batches: list[int]) -> list[str]:
    lo, hi = batches[0], batches[-1]
    out = []
    for r in rows:
        rates, svc = r["rates"], r["service"]
        what = f"{r['arch']} {r['dtype']} compile {r['compile']}"
        target = " (target >= 1.8 on SD 1.5 shapes)" if r["arch"] == "SD 1.5" else ""
        line = (
            f"{what}: batched x{hi} vs unbatched x{lo} direct "
            f"{rates[hi][0] / rates[lo][0]:.2f}x{target}"
        )
        if svc:
            b, u = svc["batched"], svc["unbatched"]
            line += (
                f"; service batched vs direct x{hi} {b[0] / rates[hi][0]:.2f}x "
                f"(target >= 0.95); service batched vs unbatched "
                f"{b[0] / u[0]:.2f}x"
            )
        out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", nargs="+", choices=list(ARCHES), default=list(ARCHES))
    ap.add_argument(
        "--dtype", nargs="+", choices=["float16", "bfloat16"], default=["float16", "bfloat16"]
    )
    ap.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=3, help="timed calls (direct) or bursts")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's usual")
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--service-arch",
        nargs="*",
        choices=list(ARCHES),
        default=None,
        help="the models also measured through the service (default: all; the "
        "CPU smoke: sd15); none = direct calls only",
    )
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU, fp32")
    ap.add_argument("--write", type=Path, help="append the results to this markdown file")
    args = ap.parse_args()
    args.batches = sorted(set(args.batches))
    args.threads = 0

    import logging

    import torch
    from diffusers.utils import logging as diffusers_logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    smoke = args.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else args.device
    if smoke:
        if not args.cpu_smoke:
            print("no CUDA device: running the CPU smoke instead (its figures measure nothing)")
        # fp32 (CPU half precision is slow and lossy) and no compile: the code path, not speed.
        args.dtype, args.compile = ["float32"], ["off"]
        args.rounds = 1
        args.threads = 1  # CPU threads (0 = torch's default): a shared machine stays quick
        torch.set_num_threads(1)
        if args.service_arch is None:
            args.service_arch = ["sd15"]  # one stack pair: the smoke stays about a minute
    if args.service_arch is None:
        args.service_arch = list(ARCHES)
    rows = run(args, device=device, smoke=smoke)
    title = (
        "CPU smoke (reduced sizes: not a benchmark)"
        if smoke
        else "SD 1.5 and SDXL shapes, random weights"
    )
    report = "\n".join(
        [
            f"### {title}",
            "",
            f"Machine: {machine(device)}",
            "",
            f"Command: `{' '.join(sys.argv)}`",
            "",
            table(rows, args.batches, device=device),
            "",
            *(f"- {line}" for line in ratios(rows, args.batches)),
            "",
        ]
    )
    publish(report, args.write, smoke=smoke)


if __name__ == "__main__":
    main()
