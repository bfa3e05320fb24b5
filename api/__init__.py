"""Daikon's HTTP API. `create_app(settings)` builds everything; importing builds nothing.

Never imports torch, diffusers or transformers (tests/api/test_boundaries.py proves it).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from api import bodies
from api.services import Services
from server.settings import Settings


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the app. `overrides` are Settings fields, for tests and embedding."""
    settings = settings or Settings(**overrides)
    app = Flask(__name__)
    app.request_class = bodies.Request
    app.config["MAX_CONTENT_LENGTH"] = settings.api.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["daikon"] = Services.build(settings)

    from api import (
        admin,
        catalog,
        dashboard,
        errors,
        health,
        jobs,
        metrics,
        openai_compat,
        openapi,
        readiness,
        streams,
        usage,
        webhook_routes,
    )

    errors.register(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(streams.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(catalog.bp)
    app.register_blueprint(readiness.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(openai_compat.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(webhook_routes.bp)
    app.register_blueprint(usage.bp)
    app.register_blueprint(dashboard.bp)
    if settings.cors_origin_list:
        from flask_cors import CORS

        CORS(
            app,
            origins=settings.cors_origin_list,
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-None-Match",
                "Last-Event-ID",
            ],
            expose_headers=[
                "ETag",
                "Location",
                "Retry-After",
                "Idempotent-Replayed",
                "x-should-retry",
            ],
            max_age=600,
        )
    logging.getLogger("daikon").setLevel(logging.INFO)
    return app
