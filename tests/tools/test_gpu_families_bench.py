"""The GPU families benchmark still runs (its CPU smoke: the same code path at tiny sizes), so
a broken script is found here, not on the day a GPU is there to run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.stack import ROOT

pytestmark = [
    pytest.mark.slow,  # a benchmark: every family built and run
    pytest.mark.filterwarnings(
        "ignore:__array_wrap__ must accept context:DeprecationWarning"  # numpy 2, upstream
    ),
]


def test_gpu_families_bench_cpu_smoke_reports_every_architecture() -> None:
    out = subprocess.run(
        [sys.executable, "bench/gpu_families.py", "--cpu-smoke", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "x64 |" in line]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == [
        "SDXL base 1.0",
        "SD3-medium",
        "FLUX.1-dev",
        "Janus-Pro-1B",
        "Janus-Pro-7B",
    ], out.stdout
    for row in rows:
        seconds_per_image = float(row.split(" | ")[6])
        assert seconds_per_image > 0
    for row in rows[3:]:  # token rows: 16 image tokens each, throughput in images and tokens
        cells = row.split(" | ")
        assert (cells[1], cells[4]) == ("JanusForConditionalGeneration", "16"), row
        assert float(cells[7]) > 0 and float(cells[8]) > 0, row
    assert "CPU smoke (reduced sizes: not a benchmark)" in out.stdout


def _bench_module():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_families", ROOT / "bench/gpu_families.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def test_full_size_configs_have_the_published_sizes_and_capabilities() -> None:
    """Built on the meta device (no memory, no GPU): the parameter counts of the published
    checkpoints, and the capabilities the adapter derives from them."""
    import torch

    from worker.generation import Generator

    bench = _bench_module()
    expected = {
        # component -> billions of parameters in the published checkpoint
        "sdxl": ({"unet": 2.567, "text_encoder": 0.123, "text_encoder_2": 0.695}, 8, None),
        "sd3": ({"transformer": 2.028, "text_encoder_3": 4.762}, 16, 3072),
        "flux": ({"transformer": 11.901, "text_encoder_2": 4.762, "vae": 0.084}, 16, None),
    }
    for name, (sizes, multiple, max_size) in expected.items():
        pipe = bench.ARCHES[name].build(bench.Build("meta", torch.bfloat16, smoke=False))
        for component, billions in sizes.items():
            count = sum(p.numel() for p in getattr(pipe, component).parameters()) / 1e9
            assert round(count, 3) == billions, (name, component, count)
        caps = Generator(pipe, model=name).capabilities
        assert (caps.native_width, caps.native_height) == (1024, 1024), name
        assert (caps.size_multiple, caps.max_size) == (multiple, max_size), name


def test_janus_pro_full_size_configs_have_the_published_sizes_and_capabilities() -> None:
    """Built on the meta device through the bench's own builder: the published parameter counts
    and the capabilities the TokenGenerator derives. Counted: every parameter built, lm_head
    apart from the input embeddings as the published checkpoints store it (7B: 14.84 GB in
    bf16), and the same without lm_head, which text-to-image never runs (= a tied count)."""
    import torch

    bench = _bench_module()
    expected = {
        # name -> billions: all, all but lm_head, the Llama LM alone
        "janus-pro-1b": (2.077, 1.867, 1.443),
        "janus-pro-7b": (7.408, 6.988, 6.491),
    }
    for name, (total, without_head, lm) in expected.items():
        generator = bench.ARCHES[name].build(bench.Build("meta", torch.bfloat16, smoke=False))
        model = generator.model
        count = sum(p.numel() for p in model.parameters()) / 1e9
        head = model.lm_head.weight.numel() / 1e9
        lm_count = sum(p.numel() for p in model.model.language_model.parameters()) / 1e9
        assert round(count, 3) == total, (name, count)
        assert round(count - head, 3) == without_head, (name, count - head)
        assert round(lm_count, 3) == lm, (name, lm_count)
        caps = generator.capabilities
        assert caps.kind == "autoregressive", name
        assert caps.pipeline_class == "JanusForConditionalGeneration", name
        assert (caps.native_width, caps.native_height) == (384, 384), name
        assert (caps.min_size, caps.max_size) == (384, 384), name
        assert (caps.image_tokens, caps.codebook_size) == (576, 16384), name
        assert caps.defaults.guidance_scale == 5.0, name
