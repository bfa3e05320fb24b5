"""GET /v1/models: the models a client may name, with how many live workers serve each and
how many jobs wait for it. A model no worker serves still takes jobs; they wait, queued."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint
from pydantic import BaseModel, Field

from api import openapi
from api.auth import authenticate
from api.services import services
from daikon import workers
from daikon.errors import ServiceUnavailable
from daikon.limits import ModelLimits
from db import stats
from db.session import session_scope

bp = Blueprint("catalog", __name__, url_prefix="/v1")


class ModelOut(BaseModel):
    name: str
    default: bool
    workers: int
    queued: int
    device: str | None = Field(
        description="Where its workers run it (cpu, cuda, ...); null until one has loaded it."
    )
    limits: ModelLimits | None = Field(
        description="What one job may cost there, and each tenant's budget; null until a "
        "worker has loaded it (jobs are then checked by the worker)."
    )


class ModelList(BaseModel):
    models: list[ModelOut]


@bp.get("/models")
@openapi.operation(
    "List models", tags=["models"], responses={200: ModelList},
    errors={503: "`broker_unavailable`: Redis, which holds the worker heartbeats, is down."},
)  # fmt: skip
def list_models() -> Any:
    authenticate()
    svc = services()
    settings = svc.settings
    try:
        serving = workers.serving(settings, workers.live_workers(svc.live.redis))
    except redis.RedisError as e:
        raise ServiceUnavailable(
            "worker heartbeats are unavailable (Redis); retry shortly", code="broker_unavailable"
        ) from e
    with session_scope(svc.sessions) as session:
        queued = stats.queued_by_model(session=session)
    out = ModelList(models=[])
    for name in settings.model_specs:
        served = svc.served_models.get(name)
        out.models.append(
            ModelOut(
                name=name,
                default=name == settings.default_model_name,
                workers=serving[name],
                queued=queued.get(name, 0),
                device=served.device if served else None,
                limits=served.limits if served else None,
            )
        )
    return out.model_dump(mode="json")
