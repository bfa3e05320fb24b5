"""Benchmark 6 still runs end to end with tiny parameters (Cog's server when the `bench` extra
is installed, a plain Celery worker, the whole Daikon stack): a broken bench is found here."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.stack import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # every peer's server, then Daikon's stack


def test_peers_bench_runs_every_peer_and_reports_the_ratios() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "bench/peers.py",
            "--jobs",
            "2",
            "--burst",
            "3",
            "--steps",
            "2",
            "--size",
            "32",
            "--rounds",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ")}
    for peer in (
        "plain Celery task",
        "Daikon (whole service, event stream)",
        "Daikon (whole service, polls at 20 Hz)",
    ):
        assert rows[peer].count("jobs/s") == 2, out.stdout
    if importlib.util.find_spec("cog") is not None:
        assert rows["Cog HTTP server"].count("jobs/s") == 2, out.stdout
        assert any(line.startswith("6. Daikon (polls) vs Cog one at a time:") for line in lines)
        assert any(line.startswith("6. Cog answered") and "409s" in line for line in lines)
    else:
        assert "skipped" in rows["Cog HTTP server"], out.stdout
    assert any(line.startswith("6. Daikon (event stream) vs plain Celery:") for line in lines)
