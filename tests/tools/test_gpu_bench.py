"""The GPU benchmark still runs (its CPU smoke: the same code path at tiny sizes, the service
path through a real worker process included), so a broken script is found here, not on the
day a GPU is there to run it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.stack import ROOT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


def test_gpu_bench_cpu_smoke_reports_every_model_batch_size_and_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "bench/gpu.py", "--cpu-smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "CPU smoke (reduced sizes: not a benchmark)" in out.stdout
    rows = [
        line.split(" | ")
        for line in out.stdout.splitlines()
        if line.startswith("| ") and "x64 |" in line
    ]
    assert [r[0].lstrip("| ") for r in rows] == ["SD 1.5", "SDXL base 1.0"], out.stdout
    for r in rows:
        images_per_second = [float(v) for v in r[5:9]]  # batch 1, 2, 4, 8
        assert all(v > 0 for v in images_per_second), r
    sd15, sdxl = rows
    batched = float(sd15[10].split(" (")[0])  # the service, batching on, then off
    assert batched > 0 and float(sd15[11].rstrip(" |")) > 0, sd15
    assert sdxl[10] == "-", sdxl  # the smoke serves SD 1.5 only
    ratios = [line for line in out.stdout.splitlines() if line.startswith("- SD 1.5 float32")]
    assert len(ratios) == 1 and "service batched vs direct x8" in ratios[0], out.stdout
