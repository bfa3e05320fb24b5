"""Row factories: the least a test must say to get a job in a given state."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from daikon.contract import JobParams
from db import jobs
from db.models import Job

DEFAULT_PARAMS: dict[str, Any] = {
    "prompt": "a red circle",
    "negative_prompt": None,
    "width": 64,
    "height": 64,
    "steps": 4,
    "guidance_scale": 7.5,
    "candidates": 2,
    "top_k": 1,
    "seed": 7,
}


def job_params(**overrides: Any) -> JobParams:
    return JobParams(**{**DEFAULT_PARAMS, **overrides})


def make_job(session: Session, **overrides: Any) -> Job:
    return jobs.create(session=session, params=job_params(**overrides))


def image(rank: int, score: float, *, seed: int = 7) -> jobs.NewImage:
    return jobs.NewImage(
        rank=rank,
        clip_score=score,
        seed=seed,
        width=64,
        height=64,
        content_type="image/png",
        storage_key=f"k/{rank}.png",
        byte_size=10,
    )
