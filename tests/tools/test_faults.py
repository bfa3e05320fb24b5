"""The chaos suite's fault hook is inert unless DAIKON_FAULTS=1."""

from __future__ import annotations

import os
import signal

import pytest

from chaos import faults


def test_the_kill_marker_does_nothing_without_the_env_var(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(faults.ENV, raising=False)
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    faults.on_step(f"a cat {faults.KILL_WORKER}", 1)
    monkeypatch.setenv(faults.ENV, "0")
    faults.on_step(f"a cat {faults.KILL_WORKER}", 1)
    assert killed == []


def test_with_the_env_var_the_marker_kills_its_own_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(faults.ENV, "1")
    killed: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: killed.append((pid, sig)))
    faults.on_step("an ordinary prompt", 1)
    assert killed == []
    faults.on_step(f"a cat {faults.KILL_WORKER}", 1)
    assert killed == [(os.getpid(), signal.SIGKILL)]
