"""The baseline for bench/api.py: a bare Flask route under the same gunicorn settings
(gunicorn.conf.py: worker class, processes, threads, access log) as Daikon's API, so the ratio
measures Daikon's own work per request and not the server's."""

from __future__ import annotations

from flask import Flask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/bare")
    def bare() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
