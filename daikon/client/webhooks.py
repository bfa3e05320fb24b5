"""Checking a webhook Daikon sent, with the Standard Webhooks reference library the server
signs with, and reading it as the typed payload."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import ValidationError
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as _Unverified

from daikon.client.errors import WebhookVerificationError
from daikon.webhooks.payload import WebhookPayload


def verify_webhook(headers: Mapping[str, str], body: bytes | str, secret: str) -> WebhookPayload:
    """The event, if `body` was signed with `secret` (or the previous secret during a rotation)
    less than five minutes ago; raises WebhookVerificationError otherwise.

    Pass the raw body exactly as received (not re-serialized JSON) and the request's headers
    (`webhook-id`, `webhook-timestamp`, `webhook-signature`; any case). Deduplicate on
    `webhook-id`: a retried delivery carries the same one."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    try:
        Webhook(secret).verify(raw, dict(headers))
    except _Unverified as e:
        raise WebhookVerificationError(f"webhook refused: {e}") from e
    except Exception as e:  # a malformed secret (not whsec_<base64>)
        raise WebhookVerificationError(f"webhook refused: bad secret ({e})") from e
    try:
        return WebhookPayload.model_validate_json(raw)
    except ValidationError as e:
        raise WebhookVerificationError(f"webhook body is not a Daikon event: {e}") from e
