"""One typed settings object, read from the environment, shared by API, worker and tools.

Service URLs use their conventional unprefixed names (`REDIS_URL`, `DATABASE_URL`) so a
deployment's existing environment works; everything Daikon-specific is `DAIKON_*`.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # A Hub id or a local folder; empty = the embedded tiny models under data_dir/models.
    model: str = ""
    clip_model: str = ""
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    torch_threads: int = Field(0, ge=0)  # 0 = leave torch's default

    # --- queue ----------------------------------------------------------------------------
    queue: str = "daikon.generate"
    worker_concurrency: int = Field(1, ge=1)
    # Order matters (see daikon/celery_config.py): hard limit < visibility timeout.
    job_time_limit_seconds: int = Field(1800, ge=10)
    visibility_timeout_seconds: int = Field(3600, ge=20)

    # --- request defaults and bounds --------------------------------------------------------
    default_width: int = 64
    default_height: int = 64
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

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.job_time_limit_seconds >= self.visibility_timeout_seconds:
            raise ValueError(
                "DAIKON_JOB_TIME_LIMIT_SECONDS must be below DAIKON_VISIBILITY_TIMEOUT_SECONDS, "
                "or the broker redelivers a job that is still running"
            )
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

    @property
    def model_id(self) -> str:
        return self.model or str(self.data_path / "models" / "tiny-sd")

    @property
    def clip_model_id(self) -> str:
        return self.clip_model or str(self.data_path / "models" / "tiny-clip")


def normalize_database_url(url: str) -> str:
    """Accept the `postgres://` and `postgresql://` spellings and use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url
