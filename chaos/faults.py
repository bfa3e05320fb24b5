"""Deliberate faults for the chaos suite (`make chaos`), in the spirit of Cog's failing test
predictors. Inert unless DAIKON_FAULTS=1 is in the worker's environment: never set it in
production.

With it set, a prompt containing KILL_WORKER makes the process running the pipeline SIGKILL
itself at the first denoising step: a poison input that kills its worker every time.
"""

from __future__ import annotations

import os
import signal

ENV = "DAIKON_FAULTS"
KILL_WORKER = "__daikon_fault_kill_worker__"


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def on_step(prompt: str, step: int) -> None:
    """Called at each denoising step (chaos/faulty_worker.py); does nothing unless faults are on."""
    if not enabled():
        return
    if KILL_WORKER in prompt and step >= 1:
        os.kill(os.getpid(), signal.SIGKILL)
