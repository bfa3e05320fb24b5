"""Who is signed in to the dashboard, and what they may do.

A sign-in exchanges an admin or operator key for a random session id in an HttpOnly,
SameSite=Strict cookie (Secure over HTTPS); the key itself never reaches the browser's
storage. Only the id's SHA-256 is stored (db/dashboard.py), so logout and expiry end the
session on the server. A session also keeps an HMAC of the key it was opened with, checked on
every request: revoking that key, or restarting with another DAIKON_ADMIN_KEY, ends its
sessions at once.

Every POST carries a CSRF token: an HMAC of the session id under the deployment's signing
key, checked in constant time. An operator session is refused (403) on every POST but logout.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from flask import g, request

from api.services import services
from daikon.errors import DaikonError, Forbidden, RequestErrorCode, TooManyRequests
from db import dashboard
from db.models import KeyScope
from db.session import session_scope
from db.tenants import hash_key
from server import keys

COOKIE = "daikon_admin"
LOGIN_COOKIE = "daikon_login"  # the sign-in form's own CSRF token (double submit)
CSRF_FIELD = "csrf_token"


class CsrfRefused(DaikonError):
    status = 400
    type = "invalid_request_error"
    code = RequestErrorCode.csrf_failed


@dataclass(frozen=True)
class Viewer:
    """The signed-in operator of this request."""

    token: str  # the cookie's session id (never shown, never logged)
    actor: str
    key_id: str | None
    scope: KeyScope
    notice: str | None = None  # what the last action said, not shown yet

    @property
    def can_act(self) -> bool:
        return self.scope is KeyScope.admin

    @property
    def csrf(self) -> str:
        return csrf_for(self.token)


def csrf_for(token: str) -> str:
    key = services().signing_key
    return hmac.new(key, f"dashboard-csrf|{token}".encode(), hashlib.sha256).hexdigest()


def settings_key_hash() -> str | None:
    """The SHA-256 of DAIKON_ADMIN_KEY as this process knows it (what the sessions opened
    with the settings' key are checked against); None when the deployment has none."""
    admin = services().settings.security.admin_key
    return None if admin is None else hash_key(admin.get_secret_value())


def cookie_secure() -> bool:
    public = services().settings.services.public_url
    return request.is_secure or public.startswith("https://")


def current() -> Viewer | None:
    """The request's live session, if its cookie names one."""
    cached = g.get("viewer")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = request.cookies.get(COOKIE, "")
    if not token:
        return None
    svc = services()
    with session_scope(svc.sessions) as session:
        row = dashboard.find_session(
            session=session,
            token=token,
            secret=svc.signing_key,
            settings_key_hash=settings_key_hash(),
        )
        if row is None:
            return None
        viewer = Viewer(
            token=token, actor=row.actor, key_id=row.key_id, scope=row.scope, notice=row.notice
        )
    g.viewer = viewer
    return viewer


def check_csrf(expected: str) -> None:
    given = request.form.get(CSRF_FIELD) or request.headers.get("X-CSRF-Token", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused("the form's CSRF token is missing or wrong: reload the page and retry")


def require_admin(viewer: Viewer) -> None:
    if not viewer.can_act:
        raise Forbidden("an operator key is read-only: this action needs an admin key")


def new_login_token() -> str:
    return secrets.token_urlsafe(24)


def count_login_attempt() -> None:
    """Sign-in attempts per client address and minute (a fixed window in Redis, shared by
    every API process); past the limit, 429 with Retry-After."""
    svc = services()
    limit = svc.settings.security.login_attempts_per_minute
    now = time.time()
    window = int(now // 60)
    # Per deployment (several may share a Redis), client address and minute.
    where = f"{svc.settings.services.queue}:{request.remote_addr or '-'}"
    key = keys.login_attempts(where, window)
    pipe = svc.live.redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 120)
    count = int(pipe.execute()[0])
    if count > limit:
        raise TooManyRequests(
            f"more than {limit} sign-in attempts a minute from this address; wait a minute",
            retry_after=max(1, int((window + 1) * 60 - now) + 1),
            code=RequestErrorCode.too_many_login_attempts,
        )
