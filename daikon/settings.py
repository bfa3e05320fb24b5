"""One typed settings object, read from the environment, shared by API, worker and tools.

Service URLs use their conventional unprefixed names (`REDIS_URL`, `DATABASE_URL`) so a
deployment's existing environment works; everything Daikon-specific is `DAIKON_*`.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from daikon.limits import LimitOverrides

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# The embedded default: small models trained on the shapes world (`make train-models`) and
# committed under models/, so a checkout draws something recognisable with no download.
EMBEDDED_MODELS = Path(__file__).resolve().parent.parent / "models"
EMBEDDED_PIPELINE = str(EMBEDDED_MODELS / "shapes-sd")
EMBEDDED_CLIP = str(EMBEDDED_MODELS / "shapes-clip")


class ModelSpec(BaseModel):
    """A servable model: its diffusers pipeline and the CLIP that ranks its candidates."""

    pipeline: str
    clip: str = ""  # empty = the deployment's DAIKON_CLIP_MODEL
    # Replaces the device's default job limits (daikon/limits.py) for this model.
    limits: LimitOverrides = Field(default_factory=LimitOverrides)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DAIKON_", extra="ignore", frozen=True)

    # --- services -------------------------------------------------------------------------
    data_dir: Path = Path(".daikon")
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "DAIKON_REDIS_URL")
    )
    database_url: str = Field(
        "", validation_alias=AliasChoices("DATABASE_URL", "DAIKON_DATABASE_URL")
    )
    port: int = 8000
    public_url: str = ""  # base URL clients use; empty = derive from each request

    # --- storage --------------------------------------------------------------------------
    storage: Literal["local", "s3"] | None = None  # None = s3 when a bucket is set, else local
    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_prefix: str = "jobs/"
    presign_seconds: int = Field(3600, ge=60, le=7 * 24 * 3600)

    # --- models ---------------------------------------------------------------------------
    # A Hub id or a local folder; empty = the embedded shapes models (models/ in the repo).
    model: str = ""
    clip_model: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int = Field(0, ge=0)  # 0 = leave torch's default

    # Named models clients may ask for, as JSON: {"sd21": {"pipeline": "...", "clip": "..."}}.
    # Empty = one model, "default", made of DAIKON_MODEL and DAIKON_CLIP_MODEL.
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    default_model: str = ""  # empty = the first of `models`
    # Which models this worker serves (comma-separated names); empty = all of them.
    worker_models: str = ""

    # --- identity and limits --------------------------------------------------------------
    admin_key: SecretStr | None = None
    # Signs the API's own image URLs (local store). Empty = a key kept in DATA_DIR/secret.key.
    secret_key: SecretStr | None = None
    # Fernet keys (comma-separated; the first encrypts, all decrypt) for secrets stored in the
    # database (webhook signing secrets). Empty = a key kept in DATA_DIR/encryption.key.
    encryption_keys: SecretStr | None = None
    tenant_max_active_jobs: int = Field(1000, ge=1)  # queued + running, per tenant
    tenant_submits_per_minute: int = Field(600, ge=1)
    # The default model's job limits (the model table's `limits` for DAIKON_MODELS entries);
    # unset ones take the defaults of the device the model runs on (daikon/limits.py).
    max_job_cost: float | None = Field(None, gt=0)
    images_per_call: int | None = Field(None, ge=1)
    idempotency_hours: int = Field(24, ge=1)
    max_metadata_bytes: int = Field(16 * 1024, ge=0)
    cors_origins: str = ""  # comma-separated; "*" for any; empty = CORS off
    # Requests that hold a thread for long (event streams, OpenAI-route waits), per API process;
    # kept below the server's threads so they can never starve ordinary requests.
    max_long_requests: int = Field(100, ge=1)
    # ... and per tenant, so one tenant can never hold every slot of a process.
    max_long_requests_per_tenant: int = Field(25, ge=1)
    event_stream_max_seconds: int = Field(3600, ge=5)
    openai_wait_seconds: float = Field(60.0, ge=0)

    # --- queue ----------------------------------------------------------------------------
    queue: str = "daikon.generate"
    worker_concurrency: int = Field(1, ge=1)
    # Order matters (see daikon/celery_config.py): hard limit < visibility timeout.
    job_time_limit_seconds: int = Field(1800, ge=10)
    visibility_timeout_seconds: int = Field(3600, ge=20)
    # A running job holds a lease in the database, renewed by its worker every third of this;
    # a job whose lease lapsed (its worker died) may be claimed again, up to max_attempts.
    lease_seconds: int = Field(60, ge=3)
    max_attempts: int = Field(3, ge=1)
    # The sweeper's threshold, the last safety net: a job whose message the broker lost is
    # published again once it has been stuck this long. Must exceed the visibility timeout.
    stale_job_seconds: int = Field(4000, ge=30)
    # A job committed but never confirmed published is published again after this.
    republish_after_seconds: int = Field(30, ge=1)
    sweep_interval_seconds: float = Field(15.0, gt=0)
    # How long an upload keeps retrying (with backoff) while storage is down.
    storage_retry_seconds: float = Field(60.0, ge=0)

    # --- webhooks -------------------------------------------------------------------------
    webhook_queue: str = "daikon.webhooks"  # its own queue: a slow receiver never delays jobs
    webhook_timeout_seconds: float = Field(15.0, gt=0, le=120)  # per attempt, all of it
    # Receivers trusted even on internal addresses: host names, IPs, CIDRs (comma-separated).
    # Empty = public addresses only. `make run` allows loopback unless this is set.
    webhook_allow_hosts: str = ""
    webhook_secret_overlap_hours: float = Field(24.0, ge=0, le=24 * 30)  # old secret still signs
    webhook_concurrency: int = Field(8, ge=1)  # delivery threads `make run` gives its worker
    webhook_dispatch_seconds: float = Field(5.0, gt=0)  # how often due retries are looked for

    # --- request defaults and bounds --------------------------------------------------------
    # The embedded shapes model's native size; set 512 or 1024 for Stable Diffusion models.
    default_width: int = 32
    default_height: int = 32
    default_steps: int = 20
    default_guidance_scale: float = 7.5
    default_candidates: int = 4
    default_top_k: int = 1
    min_size: int = 32
    max_size: int = 1024
    max_steps: int = 150
    max_guidance_scale: float = 30.0
    max_candidates: int = 16
    max_prompt_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    list_limit_max: int = 100

    @field_validator("models", mode="before")
    @classmethod
    def _models_json(cls, v: object) -> object:
        return json.loads(v) if isinstance(v, str) and v.strip() else (v or {})

    @model_validator(mode="after")
    def _check(self) -> Settings:
        for name in self.models:
            if not MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must match {MODEL_NAME.pattern}")
        if self.default_model and self.default_model not in self.model_specs:
            raise ValueError(f"DAIKON_DEFAULT_MODEL {self.default_model!r} is not in the models")
        unknown = set(self.served_models) - set(self.model_specs)
        if unknown:
            raise ValueError(f"DAIKON_WORKER_MODELS names unknown models: {sorted(unknown)}")
        if self.visibility_timeout_seconds >= self.stale_job_seconds:
            raise ValueError(
                "DAIKON_VISIBILITY_TIMEOUT_SECONDS must be below DAIKON_STALE_JOB_SECONDS, "
                "or the sweeper republishes jobs the broker is about to redeliver"
            )
        if self.job_time_limit_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                "DAIKON_JOB_TIME_LIMIT_SECONDS must be below DAIKON_VISIBILITY_TIMEOUT_SECONDS, "
                "or the broker redelivers a job that is still running"
            )
        if self.webhook_allow_hosts:
            from daikon.webhooks.safety import Allowlist

            try:
                Allowlist.parse(self.webhook_allow_list)
            except ValueError as e:
                raise ValueError(f"DAIKON_WEBHOOK_ALLOW_HOSTS: {e}") from None
        if not (self.min_size <= self.default_width <= self.max_size):
            raise ValueError("DAIKON_DEFAULT_WIDTH is outside DAIKON_MIN_SIZE..DAIKON_MAX_SIZE")
        if not (self.min_size <= self.default_height <= self.max_size):
            raise ValueError("DAIKON_DEFAULT_HEIGHT is outside DAIKON_MIN_SIZE..DAIKON_MAX_SIZE")
        if not (1 <= self.default_top_k <= self.default_candidates <= self.max_candidates):
            raise ValueError("need 1 <= DAIKON_DEFAULT_TOP_K <= DAIKON_DEFAULT_CANDIDATES <= max")
        return self

    # --- derived --------------------------------------------------------------------------
    @cached_property
    def data_path(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{self.data_path / 'daikon.db'}"

    @property
    def storage_backend(self) -> Literal["local", "s3"]:
        if self.storage:
            return self.storage
        return "s3" if self.s3_bucket else "local"

    @property
    def local_storage_path(self) -> Path:
        return self.data_path / "images"

    def size_allowed(self, side: int) -> bool:
        """One image side as the pipelines accept it: a multiple of 8 within the bounds."""
        return side % 8 == 0 and self.min_size <= side <= self.max_size

    @property
    def model_specs(self) -> dict[str, ModelSpec]:
        if self.models:
            return dict(self.models)
        limits = LimitOverrides(
            max_job_cost=self.max_job_cost, images_per_call=self.images_per_call
        )
        return {
            "default": ModelSpec(pipeline=self.model_id, clip=self.clip_model_id, limits=limits)
        }

    @property
    def default_model_name(self) -> str:
        return self.default_model or next(iter(self.model_specs))

    @property
    def served_models(self) -> list[str]:
        names = [n.strip() for n in self.worker_models.split(",") if n.strip()]
        return names or list(self.model_specs)

    def clip_for(self, model: str) -> str:
        return self.model_specs[model].clip or self.clip_model_id

    def queue_for(self, model: str) -> str:
        """Each model has its own queue: a worker consumes only the models it serves."""
        return f"{self.queue}.{model}"

    @property
    def webhook_allow_list(self) -> list[str]:
        return [h.strip() for h in self.webhook_allow_hosts.split(",") if h.strip()]

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def model_id(self) -> str:
        return self.model or EMBEDDED_PIPELINE

    @property
    def clip_model_id(self) -> str:
        return self.clip_model or EMBEDDED_CLIP


def normalize_database_url(url: str) -> str:
    """Accept the `postgres://` and `postgresql://` spellings and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
