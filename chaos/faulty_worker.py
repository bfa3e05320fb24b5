"""The chaos suite's worker app: `celery -A chaos.faulty_worker worker`, the real worker with
the fault hook (chaos/faults.py) at every denoising step. Production workers never load it."""

from chaos import faults
from worker import context

context.install_step_hook(lambda params, step: faults.on_step(params.prompt, step))

from worker.main import app  # noqa: E402 - after the hook, which the executor picks up

__all__ = ["app"]
