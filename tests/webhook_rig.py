"""A webhook deliverer driven by hand: the in-process API raises the events, a Deliverer with a
controllable clock sends them, and the broker is a list, so a whole retry schedule runs in
milliseconds with no sleeping. Shared by the worker's webhook tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from daikon.webhooks import DeliveryStatus
from db import deliveries
from db.session import session_scope
from server.job_view import Links
from tests.apps import authed
from worker.webhooks.deliver import Deliverer

BODY = {"prompt": "a red circle", "steps": 2, "candidates": 2, "top_k": 1, "seed": 1}


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


class LowJitter:
    def uniform(self, a: float, b: float) -> float:
        return a


@dataclass
class Rig:
    app: Flask
    client: FlaskClient  # a tenant of its own
    clock: Clock
    deliverer: Deliverer
    # Messages "in the broker": (delivery id, when it may run).
    published: list[tuple[str, datetime]] = field(default_factory=list)

    def event(self, url: str, events: tuple[str, ...] = ("job.canceled",)) -> str:
        """A job whose cancel raises one event for url; its delivery id."""
        r = self.client.post(
            "/v1/jobs", json={**BODY, "webhook_url": url, "webhook_events": list(events)}
        )
        assert r.status_code == 202, r.get_json()
        job_id = r.get_json()["id"]
        assert self.client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        (delivery,) = self.listing(job_id)
        return str(delivery["id"])

    def listing(self, job_id: str) -> list[dict[str, Any]]:
        r = self.client.get(f"/v1/jobs/{job_id}/webhooks")
        assert r.status_code == 200
        return list(r.get_json()["deliveries"])

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        with session_scope(self.app.extensions["daikon"].sessions) as s:
            job_id = deliveries.get(session=s, delivery_id=delivery_id).job_id
        return next(d for d in self.listing(job_id) if d["id"] == delivery_id)

    def pump(self) -> list[DeliveryStatus | None]:
        """Run what the dispatcher and the broker would run at the clock's time."""
        self.deliverer.dispatch()
        now = self.clock()
        ready = [d for d, at in self.published if at <= now]
        self.published[:] = [(d, at) for d, at in self.published if at > now]
        return [self.deliverer.deliver(d) for d in ready]

    def secret(self, **body: Any) -> str:
        r = self.client.post("/v1/webhooks/secret", json=body)
        assert r.status_code == 201
        return str(r.get_json()["secret"])


def make_rig(app: Flask, **settings: Any) -> Rig:
    svc = app.extensions["daikon"]
    root = authed(app)
    tenant = root.post("/v1/admin/tenants", json={"name": f"t-{uuid.uuid4().hex[:8]}"}).get_json()
    key = root.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={}).get_json()["key"]
    clock = Clock()
    rig = Rig(app, authed(app, key), clock, None)  # type: ignore[arg-type]
    rig.deliverer = Deliverer(
        sessions=svc.sessions,
        settings=svc.settings.evolve(**settings),
        publish=lambda d, countdown: rig.published.append(
            (d, clock() + timedelta(seconds=countdown))
        ),
        links=Links("", svc.store, svc.signing_key, 60),
        clock=clock,
        rng=LowJitter(),
    )
    return rig
