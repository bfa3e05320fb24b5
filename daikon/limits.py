"""How much work one job may ask of a model, and how a worker splits it.

A job's cost is its megapixel-steps: width x height x candidates x steps / 10^6. It bounds how
long the job holds a worker, so it is bounded per model (`max_job_cost`), with defaults for the
kind of device the model runs on: a CPU does in minutes what a GPU does in a second. Candidates
run `images_per_call` at a time (each chunk denoised and decoded on its own), so a cancel or a
lost lease is honoured within one step of one chunk. The time a job is allowed follows from its
cost (`seconds_per_cost`), and each tenant's queued and running cost per model is capped
(`tenant_queued_cost`), so one tenant cannot fill a model's queue with work that belongs to all.

The worker resolves a model's limits when it loads it (the device is known then) and publishes
them (server/served_models.py); the API checks submissions against what was published, and the
worker checks again before any GPU work, so a deployment no worker has served yet refuses a job
too large with the same code and message, as a failed job instead of a 422.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

# A job's time allowance: this much for loading and bookkeeping, plus its cost's worth.
BASE_SECONDS = 60.0
# The per-message hard limit sits this far past the soft one: the soft limit fails the job
# cleanly; the hard one kills a process that did not stop.
HARD_LIMIT_GRACE_SECONDS = 30.0
TOO_LARGE = "job_too_large"


class ModelLimits(BaseModel):
    """One model's limits as a worker resolved them for its device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_job_cost: float = Field(
        gt=0,
        description="Most megapixel-steps one job may cost (width x height x candidates x "
        "steps / 10^6).",
    )
    images_per_call: int = Field(
        ge=1,
        description="Candidates denoised and decoded together; a cancel is honoured "
        "within one step of one such chunk.",
    )
    seconds_per_cost: float = Field(
        gt=0,
        description="Seconds allowed per megapixel-step, on top of a fixed "
        f"{BASE_SECONDS:g} s; past that allowance the job fails with `time_limit_exceeded`.",
    )
    tenant_queued_cost: float = Field(
        gt=0,
        description="Most megapixel-steps one tenant may have queued or running for this "
        "model at once; more answers 429 `too_much_queued_work`.",
    )


class LimitOverrides(BaseModel):
    """A model table entry's `limits`: any field set replaces the device's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_job_cost: float | None = Field(None, gt=0)
    images_per_call: int | None = Field(None, ge=1)
    seconds_per_cost: float | None = Field(None, gt=0)
    tenant_queued_cost: float | None = Field(None, gt=0)


# Defaults per kind of device. On this project's 2-core CPU the shapes model runs 10 to 100 s
# per megapixel-step (more at large sizes, where attention dominates), a 1024 px step of one
# image about 74 s; a data-centre GPU runs SDXL at about 0.1 s per megapixel-step.
DEVICE_DEFAULTS: dict[str, ModelLimits] = {
    # e.g. 32 px x 16 candidates x 150 steps (2.5), or 256 px x 4 candidates x 15 steps (3.9)
    "cpu": ModelLimits(
        max_job_cost=4.0, images_per_call=4, seconds_per_cost=120.0, tenant_queued_cost=200.0
    ),
    # e.g. 1024 px x 8 candidates x 50 steps (419)
    "gpu": ModelLimits(
        max_job_cost=420.0, images_per_call=8, seconds_per_cost=2.0, tenant_queued_cost=21000.0
    ),
}


def device_kind(device: str) -> str:
    return "cpu" if device == "cpu" else "gpu"


def resolve(device: str, overrides: LimitOverrides | None = None) -> ModelLimits:
    """The device's defaults with the model table's overrides applied."""
    base = DEVICE_DEFAULTS[device_kind(device)]
    if overrides is None:
        return base
    return base.model_copy(update=overrides.model_dump(exclude_none=True))


def job_cost(*, width: int, height: int, candidates: int, steps: int) -> float:
    """Megapixel-steps."""
    return width * height * candidates * steps / 1e6


def too_large(
    cost: float, limits: ModelLimits, *, model: str, device: str, describe: str
) -> str | None:
    """The refusal for a job over its model's limit, or None. `describe` spells the cost."""
    if cost <= limits.max_job_cost:
        return None
    return (
        f"this job costs {cost:.4g} megapixel-steps ({describe}); model {model!r} on {device} "
        f"allows at most {limits.max_job_cost:g}: ask for a smaller size, fewer candidates or "
        "fewer steps"
    )


def batch_ceiling(cost: float, candidates: int, limits: ModelLimits) -> float:
    """The most a batch that a job of this cost may run in can cost: one full pipeline call
    of images like its own (workers batch compatible jobs up to `images_per_call` images), so
    the job's message carries time limits that cover the batch."""
    return max(cost, cost / max(candidates, 1) * limits.images_per_call)


def time_allowance(cost: float, limits: ModelLimits, ceiling: float) -> float:
    """Seconds a job of this cost may run, never past the deployment's hard limit."""
    return min(BASE_SECONDS + cost * limits.seconds_per_cost, ceiling)
