"""Liveness: the process answers. Readiness (dependencies, workers) is /readyz, in readiness.py."""

from __future__ import annotations

from flask import Blueprint

from api import openapi

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@openapi.operation(
    "Liveness",
    tags=["health"],
    auth=None,
    responses={
        200: openapi.Reply(
            "The process answers.",
            schema={
                "type": "object",
                "properties": {"status": {"const": "ok"}},
                "required": ["status"],
            },
        )
    },
)
def healthz() -> dict[str, str]:
    return {"status": "ok"}
