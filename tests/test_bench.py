"""The benchmark still runs end to end (tiny parameters): a broken bench is found here, not
when someone needs the figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.stack import ROOT

pytestmark = pytest.mark.e2e


def test_service_vs_direct_bench_runs_and_reports_its_ratio() -> None:
    out = subprocess.run(
        [sys.executable, "bench/service_vs_direct.py", "--jobs", "1", "--steps", "2",
         "--candidates", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("service / direct") and "x" in line for line in lines), out.stdout
    assert any(line.startswith("burst of 1 queued at once") for line in lines), out.stdout
