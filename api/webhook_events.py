"""Where the API raises webhook events (cancel) and checks webhook URLs at submit time."""

from __future__ import annotations

from api.serialize import links
from api.services import Services
from daikon.errors import InvalidRequest
from daikon.webhooks import TASK_DELIVER
from daikon.webhooks.safety import Allowlist, UnsafeDestination, check_url
from db import webhooks


def emitter(svc: Services) -> webhooks.Emitter:
    """Records events where the API changes a job (cancel) and publishes them by task name."""
    queue = svc.settings.webhook_queue
    return webhooks.Emitter(
        links=links(svc),
        publish=lambda d: svc.celery.send_task(TASK_DELIVER, args=[d], queue=queue),
    )


def check_webhook_url(svc: Services, url: str | None) -> None:
    """Submit-time destination check: 422 naming webhook_url, before anything is written."""
    if url is None:
        return
    try:
        check_url(url, Allowlist.parse(svc.settings.webhook_allow_list))
    except UnsafeDestination as e:
        raise InvalidRequest(f"webhook_url: {e}", param="webhook_url") from None
