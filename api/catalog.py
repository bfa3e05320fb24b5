"""GET /v1/models: the models a client may name, with how many live workers serve each and
how many jobs wait for it. A model no worker serves still takes jobs; they wait, queued."""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint

from api import openapi
from api.auth import authenticate
from api.services import services
from daikon.errors import RequestErrorCode, ServiceUnavailable
from daikon.resources import ModelList, ModelOut
from db import stats
from db.session import session_scope
from server import heartbeats

bp = Blueprint("catalog", __name__, url_prefix="/v1")


@bp.get("/models")
@openapi.operation(
    "List models",
    tags=["models"],
    responses={200: ModelList},
    errors={503: "`broker_unavailable`: Redis, which holds the worker heartbeats, is down."},
)
def list_models() -> Any:
    principal = authenticate()
    svc = services()
    settings = svc.settings
    try:
        live_workers = svc.live.live_workers()
        serving = heartbeats.serving(settings, live_workers)
    except redis.RedisError as e:
        raise ServiceUnavailable(
            "worker heartbeats are unavailable (Redis); retry shortly",
            code=RequestErrorCode.broker_unavailable,
        ) from e
    with session_scope(svc.sessions) as session:
        queued = stats.queued_by_model(session=session)

    def errors_of(model: str) -> dict[str, str] | None:
        if not principal.is_admin:
            return None
        queue = settings.queue_for(model)
        return {w.hostname: w.load_errors[queue] for w in live_workers if queue in w.load_errors}

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
                capabilities=served.capabilities if served else None,
                load_errors=errors_of(name),
            )
        )
    return out.model_dump(mode="json")
