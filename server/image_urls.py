"""Signed, expiring URLs for images the API serves itself (the local store's equivalent of an
S3 presigned URL): a browser can use them in <img src> without an API key, and a job id alone,
without the signature, opens nothing. Shared: the API signs and checks them, and the worker
signs them too when it writes a job object into a webhook."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from urllib.parse import unquote_plus

from server.private_files import read_or_create_secret
from server.settings import Settings

# URLs expire on a coarse grid so the same image keeps the same URL for a while (caching).
GRID_SECONDS = 600
# The query parameter that carries the signature (server/job_view.py writes it, api/jobs.py
# reads it). A URL with it is a capability: logs show `[redacted]` instead (redact_query).
SIGNATURE_PARAM = "sig"
REDACTED = "[redacted]"


def secret_key(settings: Settings) -> bytes:
    """DAIKON_SECRET_KEY, or a key kept in DATA_DIR/secret.key (made once, mode 0600)."""
    if settings.security.secret_key is not None:
        return settings.security.secret_key.get_secret_value().encode()
    return read_or_create_secret(settings.data_path / "secret.key").encode()


def _mac(key: bytes, job_id: str, rank: int | str, expires: int) -> str:
    digest = hmac.new(key, f"{job_id}/{rank}/{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")


def sign(key: bytes, job_id: str, rank: int | str, ttl_seconds: int) -> tuple[int, str]:
    """`rank` is an output's rank, or `input-<role>` for an edit job's input."""
    expires = math.ceil((time.time() + ttl_seconds) / GRID_SECONDS) * GRID_SECONDS
    return expires, _mac(key, job_id, rank, expires)


def verify(key: bytes, job_id: str, rank: int | str, expires: int, signature: str) -> bool:
    if expires < time.time():
        return False
    # As bytes: compare_digest refuses str with non-ASCII characters (TypeError).
    return hmac.compare_digest(_mac(key, job_id, rank, expires).encode(), signature.encode())


def redact_query(query: str) -> str:
    """A query string as a log may show it: one that carries a signature is replaced whole,
    however the parameter is spelled (`SIG`, `%73ig`): until it expires, whoever reads the
    log could fetch the image."""
    names = {
        unquote_plus(part.partition("=")[0]).strip().lower()
        for part in query.replace(";", "&").split("&")
    }
    return REDACTED if SIGNATURE_PARAM in names else query


def redact_url(text: str) -> str:
    """A URL, path or request line ("GET /path?query HTTP/1.1") with its query redacted as
    by redact_query."""
    head, mark, rest = text.partition("?")
    if not mark:
        return text
    ends = [i for i in (rest.find(" "), rest.find("#")) if i >= 0]
    end = min(ends, default=len(rest))
    return head + mark + redact_query(rest[:end]) + rest[end:]
