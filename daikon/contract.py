"""The job contract between API, database and worker: what a client may ask for and what it gets.

Bounds come from `Settings` through pydantic's validation context, so the same model validates
in the API (before anything is written) and documents the API (OpenAPI, later).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from daikon.settings import Settings

TASK_GENERATE = "daikon.generate_job"
SEED_MAX = 2**32 - 1


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.canceled})


def _settings(info: ValidationInfo) -> Settings:
    ctx = info.context or {}
    settings = ctx.get("settings")
    if not isinstance(settings, Settings):
        raise RuntimeError("JobRequest must be validated with context={'settings': Settings}")
    return settings


class JobRequest(BaseModel):
    """The body of `POST /v1/jobs`. Omitted fields take the deployment's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(description="What to draw.")
    negative_prompt: str | None = Field(None, description="What to steer away from (CFG).")
    width: int | None = Field(None, description="Multiple of 8 within the configured bounds.")
    height: int | None = Field(None, description="Multiple of 8 within the configured bounds.")
    steps: int | None = Field(None, description="Denoising steps.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale.")
    candidates: int | None = Field(None, description="Images generated before CLIP ranking.")
    top_k: int | None = Field(None, description="Images kept after ranking (<= candidates).")
    seed: int | None = Field(None, description="Base seed; image i uses seed + i.")

    @field_validator("guidance_scale", mode="before")
    @classmethod
    def _int_is_a_float(cls, v: Any) -> Any:
        # JSON has one number type: 7 and 7.0 are the same guidance scale.
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return v
        limit = _settings(info).max_prompt_chars
        if len(v) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(v)})")
        if info.field_name == "prompt" and not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        s = _settings(info)
        if v % 8 or not (s.min_size <= v <= s.max_size):
            raise ValueError(f"must be a multiple of 8 between {s.min_size} and {s.max_size}")
        return v

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = _settings(info).max_steps
        if v is not None and not (1 <= v <= limit):
            raise ValueError(f"must be between 1 and {limit}")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float | None, info: ValidationInfo) -> float | None:
        limit = _settings(info).max_guidance_scale
        if v is not None and not (0.0 <= v <= limit):
            raise ValueError(f"must be between 0 and {limit}")
        return v

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: int | None, info: ValidationInfo) -> int | None:
        limit = _settings(info).max_candidates
        if v is not None and not (1 <= v <= limit):
            raise ValueError(f"must be between 1 and {limit}")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        if v < 1:
            raise ValueError("must be at least 1")
        # `candidates` is declared first, so it is in info.data when it was valid.
        candidates = info.data.get("candidates") or _settings(info).default_candidates
        if v > candidates:
            raise ValueError(f"must not exceed candidates ({candidates})")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not (0 <= v <= SEED_MAX):
            raise ValueError(f"must be between 0 and {SEED_MAX}")
        return v

    def resolve(self, settings: Settings) -> JobParams:
        """Fill omitted fields from settings: the stored params are always complete."""
        candidates = self.candidates if self.candidates is not None else settings.default_candidates
        return JobParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            width=self.width or settings.default_width,
            height=self.height or settings.default_height,
            steps=self.steps or settings.default_steps,
            guidance_scale=(
                self.guidance_scale
                if self.guidance_scale is not None
                else settings.default_guidance_scale
            ),
            candidates=candidates,
            top_k=self.top_k if self.top_k is not None else min(settings.default_top_k, candidates),
            seed=self.seed,
        )


class JobParams(BaseModel):
    """Complete, validated generation parameters as stored on the job row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    candidates: int
    top_k: int
    seed: int | None  # None until the worker picks one; the job then records the one used


class ImageOut(BaseModel):
    rank: int = Field(description="1 = best CLIP match.")
    clip_score: float = Field(description="100 x cosine similarity of image and prompt.")
    seed: int
    width: int
    height: int
    content_type: str
    url: str


class ErrorDetail(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: JobParams
    images: list[ImageOut]
    error: ErrorDetail | None
    metrics: dict[str, float]


class JobList(BaseModel):
    jobs: list[JobOut]
