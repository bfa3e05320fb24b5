"""Standard Webhooks v1 signatures, made with the reference library so receivers using any
Standard Webhooks verifier accept them."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
ID_PREFIX = "msg_"


def new_secret() -> str:
    """whsec_ + base64 of 32 random bytes (the format Standard Webhooks verifiers expect)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def new_message_id() -> str:
    """The webhook-id: unique per event, kept across retries (no '.', which the signed
    content uses as its separator)."""
    return ID_PREFIX + secrets.token_urlsafe(18)


def signature_header(secrets_: Sequence[str], msg_id: str, timestamp: int, body: str) -> str:
    """`v1,<sig>` for each active secret, space-separated: during a rotation's overlap a
    receiver holding either secret verifies."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(Webhook(s).sign(msg_id=msg_id, timestamp=at, data=body) for s in secrets_)


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers. The timestamp is the attempt's (receivers refuse
    old ones), the id is the event's (receivers deduplicate on it)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets_, msg_id, timestamp, body),
    }
