"""The benchmark still runs end to end (tiny parameters): a broken bench is found here, not
when someone needs the figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.stack import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # the benchmarks' own processes


def test_service_vs_direct_bench_runs_and_reports_its_ratio() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "bench/service_vs_direct.py",
            "--jobs",
            "1",
            "--steps",
            "2",
            "--candidates",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("service / direct") and "x" in line for line in lines), out.stdout
    assert any(line.startswith("burst of 1 queued at once") for line in lines), out.stdout


def test_throughput_bench_runs_and_reports_every_ratio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plot = tmp_path / "plot.png"
    out = subprocess.run(
        [
            sys.executable,
            "bench/throughput.py",
            "--burst",
            "3",
            "--idle",
            "2",
            "--trivial",
            "4",
            "--steps",
            "2",
            "--rounds",
            "1",
            "--plot",
            str(plot),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for prefix in (
        "1. burst of 3",
        "2. batched",
        "3. idle overhead",
        "5. CLIP ranking share",
        "5b. 4 trivial jobs queued",
    ):
        assert any(line.startswith(prefix) for line in out.stdout.splitlines()), out.stdout
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_api_bench_runs_and_reports_its_ratios() -> None:
    """bench/api.py at tiny size (1 s per figure, a backlog of 200): wrk, both gunicorns."""
    out = subprocess.run(
        [sys.executable, "bench/api.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| GET")]
    assert any("queued job" in r and r.endswith("x |") for r in rows), out.stdout
    assert any(line.startswith("| POST /v1/jobs") for line in out.stdout.splitlines())
    assert any("[200 queued]" in r for r in rows), out.stdout


def test_reuse_bench_runs_and_reports_the_repeats_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "bench/reuse.py", "--rounds", "1", "--candidates", "1", "--steps", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for side in ("worker", "client"):
        assert any(line.startswith(f"{side}: fresh") and "x faster" in line for line in lines), (
            out.stdout
        )
