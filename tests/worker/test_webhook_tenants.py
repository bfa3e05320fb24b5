"""`make run` trusts loopback receivers for the admin's own tenant only
(DAIKON_WEBHOOK_ALLOW_TENANTS=admin): another tenant cannot aim a webhook at a local service,
neither at submit time nor at delivery (where a name may resolve otherwise than it did), on a
real database with real receivers."""

from __future__ import annotations

from typing import Any

import pytest

from daikon.webhooks import DeliveryStatus
from server.settings import Settings
from tests.conftest import authed
from tests.receiver import receiver
from tests.webhook_rig import BODY, Rig, make_rig

LOCAL = "127.0.0.1,::1,localhost"  # what make run allows (server/launcher.py)


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_local_receivers_are_the_admin_tenants_alone(
    make_app: Any, queue_name: str, request: pytest.FixtureRequest, db: str
) -> None:
    over: dict[str, Any] = {
        "webhook_queue": f"{queue_name}-wh",
        "webhook_allow_hosts": LOCAL,
        "webhook_timeout_seconds": 2.0,
    }
    if db == "postgres":
        over["database_url"] = request.getfixturevalue("postgres_url")
    app = make_app(**over, webhook_allow_tenants="admin")
    tenant = make_rig(app)  # a tenant of its own; its deliverer has make run's settings
    admin = Rig(app, authed(app), tenant.clock, tenant.deliverer)  # DAIKON_ADMIN_KEY's jobs
    with receiver() as r:
        for url in (r.url(), r.url(host="localhost"), r.url(host="[::1]")):
            refused = tenant.client.post("/v1/jobs", json={**BODY, "webhook_url": url})
            assert refused.status_code == 422, refused.get_json()
            error = refused.get_json()["error"]
            assert error["param"] == "webhook_url" and "loopback" in error["message"]
        assert admin.deliverer.deliver(admin.event(r.url())) is DeliveryStatus.delivered
        assert len(r.received) == 1

        # A tenant's URL that got in under a wider list (a deployment before this setting):
        # make run's delivery refuses it without connecting.
        wide = make_rig(make_app(**over))
        late = wide.event(r.url())
        assert tenant.deliverer.deliver(late) is DeliveryStatus.pending
        assert len(r.received) == 1
    (attempt,) = wide.delivery(late)["attempts"]
    assert attempt["error"].startswith("refused: ") and "loopback" in attempt["error"]


def test_without_the_setting_the_allowlist_is_every_tenants() -> None:
    assert Settings(webhook_allow_hosts=LOCAL).webhook_allow_tenant_names == frozenset()
    named = Settings(webhook_allow_hosts=LOCAL, webhook_allow_tenants=" admin, ops ,")
    assert named.webhook_allow_tenant_names == {"admin", "ops"}
