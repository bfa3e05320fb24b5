"""The job contract between API, database and worker: what a client may ask for and what it gets.

Bounds come from `Settings` through pydantic's validation context, so the same model validates
in the API (before anything is written) and documents the API (OpenAPI, later).
"""

from __future__ import annotations

import enum
import json
import unicodedata
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from daikon.limits import job_cost
from daikon.settings import Settings

TASK_GENERATE = "daikon.generate_job"
SEED_MAX = 2**32 - 1
PRIORITY_MAX = 9
DEFAULT_PRIORITY = 5

# Schedulers a client may name, as diffusers classes. All are compatible with the Stable
# Diffusion family; the worker still checks the loaded pipeline's `compatibles` before any
# GPU work and fails the job with `unsupported_scheduler` if a model does not support one.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2s": "DPMSolverSinglestepScheduler",
    "deis": "DEISMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
}


class WebhookEvent(enum.StrEnum):
    started = "job.started"
    progress = "job.progress"
    succeeded = "job.succeeded"
    failed = "job.failed"
    canceled = "job.canceled"


DEFAULT_WEBHOOK_EVENTS = (WebhookEvent.succeeded, WebhookEvent.failed, WebhookEvent.canceled)


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


def visible(char: str) -> bool:
    """A character that draws something: a letter, number, punctuation or symbol (not a space,
    control, format character such as U+200B ZERO WIDTH SPACE, or a lone combining mark)."""
    return unicodedata.category(char)[0] in "LNPS"


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
    model: str | None = Field(None, description="A model name from GET /v1/models.")
    scheduler: str | None = Field(None, description="A diffusers scheduler (see SCHEDULERS).")
    priority: int | None = Field(None, description="0-9, higher runs first (default 5).")
    metadata: dict[str, Any] | None = Field(None, description="Client JSON, stored as given.")
    webhook_url: str | None = Field(None, description="Where job events are POSTed.")
    webhook_events: list[WebhookEvent] | None = Field(
        None, description="Events to send (default: the terminal ones)."
    )

    @field_validator("webhook_events", mode="before")
    @classmethod
    def _events_from_strings(cls, v: Any) -> Any:
        # Strict mode would refuse plain JSON strings for the enum: convert, naming bad ones.
        if isinstance(v, list):
            known = {e.value: e for e in WebhookEvent}
            bad = [x for x in v if not isinstance(x, str) or x not in known]
            if bad:
                raise ValueError(f"unknown events {bad}; known: {sorted(known)}")
            return [known[x] for x in v]
        return v

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
        if info.field_name == "prompt":
            if not v.strip():
                raise ValueError("must not be empty")
            if not any(visible(c) for c in v):
                raise ValueError(
                    "must contain a visible character (it has only invisible ones, such as "
                    "zero-width spaces or joiners)"
                )
        return v

    @field_validator("width", "height")
    @classmethod
    def _size(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is None:
            return v
        s = _settings(info)
        if not s.size_allowed(v):
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

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None, info: ValidationInfo) -> str | None:
        known = sorted(_settings(info).model_specs)
        if v is not None and v not in known:
            raise ValueError(f"unknown model {v!r}; available: {', '.join(known)}")
        return v

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, v: str | None) -> str | None:
        if v is None:
            return v
        by_class = {c: n for n, c in SCHEDULERS.items()}
        name = v if v in SCHEDULERS else by_class.get(v)
        if name is None:
            raise ValueError(f"unknown scheduler {v!r}; available: {', '.join(SCHEDULERS)}")
        return name

    @field_validator("priority")
    @classmethod
    def _priority(cls, v: int | None) -> int | None:
        if v is not None and not (0 <= v <= PRIORITY_MAX):
            raise ValueError(f"must be between 0 and {PRIORITY_MAX}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        limit = _settings(info).max_metadata_bytes
        if v is not None and len(json.dumps(v, separators=(",", ":"))) > limit:
            raise ValueError(f"must be at most {limit} bytes as JSON")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an absolute http or https URL")
        if url.username or url.password:
            raise ValueError("must not contain credentials")
        if len(v) > 2048:
            raise ValueError("must be at most 2048 characters")
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
            model=self.model or settings.default_model_name,
            scheduler=self.scheduler,
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
    model: str = "default"
    scheduler: str | None = None  # None = the pipeline's own

    @property
    def cost(self) -> float:
        """Megapixel-steps (daikon/limits.py): what bounds how long the job holds a worker."""
        return job_cost(width=self.width, height=self.height, candidates=self.candidates,
                        steps=self.steps)  # fmt: skip

    def describe_cost(self) -> str:
        return (f"{self.width}x{self.height} px x {self.candidates} candidates x "
                f"{self.steps} steps")  # fmt: skip


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


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class JobUrls(BaseModel):
    get: str
    cancel: str
    events: str


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: JobParams
    priority: int
    metadata: dict[str, Any] | None
    webhook_url: str | None
    webhook_events: list[WebhookEvent]
    images: list[ImageOut]
    error: ErrorDetail | None
    metrics: dict[str, float]
    progress: Progress | None = Field(None, description="While running: the denoising step.")
    queue_position: int | None = Field(None, description="While queued: jobs ahead of it.")
    urls: JobUrls


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page.")
    has_more: bool = False
