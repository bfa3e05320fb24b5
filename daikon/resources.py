"""The API's answers and small request bodies as pydantic models, shared by the API (which
validates and documents with them) and the Python client (which returns them), so both sides
agree on every field by construction. Job models are daikon/contract.py's."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from daikon.capabilities import ModelCapabilities
from daikon.contract import DEFAULT_PRIORITY, PRIORITY_MAX, JobStatus
from daikon.limits import ModelLimits
from daikon.webhooks import DeliveryStatus

# --- errors -----------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    type: str = Field(description="The error's family, e.g. invalid_request_error.")
    code: str = Field(description="Machine-readable reason, e.g. invalid_request, not_found.")
    message: str = Field(description="For people; names every bad field.")
    param: str | None = Field(description="The field, parameter or header at fault, if any.")


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorBody


# --- event stream -----------------------------------------------------------------------------


class StreamStatus(BaseModel):
    """The data of a `status` event on GET /v1/jobs/{id}/events."""

    id: str
    status: JobStatus
    queue_position: int | None


# --- admin: tenants and keys ------------------------------------------------------------------


# The tenant that owns the jobs of DAIKON_ADMIN_KEY (made on its first use).
ADMIN_TENANT = "admin"


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")


class KeyScope(StrEnum):
    """What a key may do: a tenant's jobs; everything (admin); or look at everything on the
    dashboard and change nothing (operator)."""

    tenant = "tenant"
    admin = "admin"
    operator = "operator"


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field("", max_length=128)
    admin: bool = Field(False, description="The same as `scope: admin`.")
    scope: KeyScope | None = Field(
        None,
        strict=False,  # a JSON string names the scope
        description="`tenant` (the default): the tenant's jobs; `admin`: everything; "
        "`operator`: the dashboard, read-only (refused by every /v1 route).",
    )

    @model_validator(mode="after")
    def _one_answer(self) -> KeyCreate:
        if self.admin and self.scope not in (None, KeyScope.admin):
            raise ValueError(f"admin: true contradicts scope {self.scope.value!r}")
        return self


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str
    admin: bool
    scope: KeyScope
    created_at: datetime
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The API key. Shown only in this response.")


class TenantLimitsIn(BaseModel):
    """A tenant's own limits, all of them at once; null (or left out) = the deployment's."""

    model_config = ConfigDict(extra="forbid", strict=True)
    submits_per_minute: int | None = Field(
        None, ge=1, le=1_000_000, description="Submissions a minute."
    )
    max_active_jobs: int | None = Field(
        None, ge=1, le=1_000_000, description="Queued and running jobs at once."
    )
    max_candidates: int | None = Field(
        None, ge=1, description="Candidates per job (at most the deployment's maximum)."
    )
    max_priority: int | None = Field(
        None,
        ge=DEFAULT_PRIORITY,
        le=PRIORITY_MAX,
        description="Highest priority its jobs may ask for, from the default priority (no "
        "jumping the queue) to the highest; a submit above it is a 422 naming `priority`.",
    )


class TenantLimitsOut(TenantLimitsIn):
    tenant_id: str


class TenantList(BaseModel):
    tenants: list[TenantOut]


class KeyList(BaseModel):
    keys: list[KeyOut]


# --- storage: usage and quota -----------------------------------------------------------------


class RetentionOut(BaseModel):
    """How long ended jobs are kept before their rows, inputs and images are deleted."""

    canceled_hours: float | None = Field(description="null: kept forever.")
    failed_hours: float | None = Field(description="null: kept forever.")
    succeeded_hours: float | None = Field(description="null: kept forever.")


class UsageOut(BaseModel):
    """What a tenant keeps stored, against its quota."""

    tenant_id: str
    stored_bytes: int = Field(
        description="Bytes of the tenant's stored objects: edit inputs and output images."
    )
    storage_quota_bytes: int | None = Field(
        description="Past it, submissions are refused (403 `storage_quota_exceeded`); null: "
        "no quota."
    )
    own_quota: bool = Field(
        description="true: an admin set this tenant's quota; false: the deployment's."
    )
    retention: RetentionOut


class StorageQuotaSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    storage_quota_bytes: int | None = Field(
        ge=1,
        le=2**62,
        description="The tenant's own storage quota in bytes; null: the deployment's "
        "(DAIKON_TENANT_STORAGE_QUOTA_BYTES).",
    )


# --- models -----------------------------------------------------------------------------------


class ModelOut(BaseModel):
    name: str
    default: bool
    workers: int
    queued: int
    device: str | None = Field(
        description="Where its workers run it (cpu, cuda, ...); null until one has loaded it."
    )
    load_errors: dict[str, str] | None = Field(
        None,
        description="Admins only: workers told to serve it that could not load it (worker "
        "name -> why); they are not counted in `workers`.",
    )
    capabilities: ModelCapabilities | None = Field(
        description="What the model can do (sizes, schedulers, guidance, negative prompt, true "
        "CFG) and its defaults, as its worker found them; null until one has loaded it."
    )
    limits: ModelLimits | None = Field(
        description="What one job may cost there, and each tenant's budget; null until a "
        "worker has loaded it (jobs are then checked by the worker)."
    )


class ModelList(BaseModel):
    models: list[ModelOut]


# --- webhooks ---------------------------------------------------------------------------------


class SecretCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    overlap_hours: float | None = Field(
        None,
        ge=0,
        le=24 * 30,
        description="How long the previous secret keeps signing (default "
        "DAIKON_WEBHOOK_SECRET_OVERLAP_HOURS); 0 ends it at once, e.g. after a leak.",
    )


class SecretOut(BaseModel):
    secret: str = Field(description="whsec_...: shown only in this response.")
    created_at: datetime
    previous_expires_at: datetime | None = Field(
        description="Until when the previous secret still signs; null if there was none."
    )


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None = Field(
        description="At most the first 1 KiB of the answer; only from receivers outside the "
        "deployment's allowlist (an allowlisted receiver may be an internal service)."
    )
    response_bytes: int | None = Field(description="How much of the answer was read (<= 4 KiB).")
    next_attempt_at: datetime | None


class DeliveryOut(BaseModel):
    id: str = Field(description="The webhook-id header: the same on every attempt.")
    job_id: str
    event: str
    url: str
    status: DeliveryStatus
    attempt_count: int
    max_attempts: int
    next_attempt_at: datetime | None
    created_at: datetime
    last_status_code: int | None
    last_error: str | None
    attempts: list[AttemptOut]


class DeliveryList(BaseModel):
    deliveries: list[DeliveryOut]
