"""What every dashboard page shares: the blueprint, the sign-in and CSRF check that runs before
each view, the headers after it, the error page, and the helpers a page renders, records and
redirects with. Page modules import from here; nothing here imports a page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, g, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from api.dashboard import access
from api.services import services
from daikon.errors import DaikonError, InvalidRequest
from db import dashboard
from db.session import session_scope

bp = Blueprint("dashboard", __name__, url_prefix="/admin")
PAGE = 50
PUBLIC = {"dashboard.login", "dashboard.login_form"}
# The dates a search or usage period may name: far enough from year 1 and 9999 that no
# arithmetic on them (a zone's offset, a day before) leaves the calendar.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)
NEXT_LIMIT = 2048  # characters of a `next=` address kept through the sign-in


def now() -> datetime:
    return datetime.now(UTC)


@bp.before_request
def _signed_in() -> BaseResponse | None:
    if request.endpoint in PUBLIC:
        return None
    viewer = access.current()
    if viewer is None:
        if request.method == "GET" and not request.args.get("fragment"):
            back = request.full_path if safe_next(request.full_path) else None
            return redirect(url_for("dashboard.login_form", next=back))
        return render("message.html", 401, title="Signed out", message="Sign in again.")
    if request.method == "POST":
        access.check_csrf(viewer.csrf)
        if request.endpoint != "dashboard.logout":
            access.require_admin(viewer)
    return None


@bp.after_request
def _headers(resp: Response) -> Response:
    shown = g.pop("shown_notice", None)
    if shown is not None:
        with session_scope(services().sessions) as session:
            dashboard.take_notice(session=session, token=current_viewer().token, notice=shown)
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    # No inline script or style; images may come from the object store's presigned URLs.
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: "
        "https:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    return resp


@bp.errorhandler(DaikonError)
def _refused(e: DaikonError) -> Any:
    resp = render("message.html", e.status, title=f"{e.status}: {e.code}", message=e.message)
    retry_after = getattr(e, "retry_after", None)
    if retry_after is not None:
        resp.headers["Retry-After"] = str(retry_after)
    return resp


def render(template: str, status: int = 200, **context: Any) -> Response:
    viewer = access.current() if request.endpoint not in PUBLIC else None
    notice = None
    # A whole page shows the session's pending notice, once (a fragment's refresh leaves it);
    # it is cleared after the response is made (_headers), outside the view's transaction.
    if viewer is not None and viewer.notice and not template.startswith("_"):
        notice = g.shown_notice = viewer.notice
    body = render_template(f"admin/{template}", viewer=viewer, notice=notice, **context)
    return make_response(body, status)


def current_viewer() -> access.Viewer:
    viewer = access.current()
    assert viewer is not None  # _signed_in ran
    return viewer


def back(endpoint: str, notice: str, **values: Any) -> BaseResponse:
    """After an action: back to a page that says what happened. The notice is kept in the
    session (shown once), never put in the URL, so no link can make a page say anything."""
    with session_scope(services().sessions) as session:
        dashboard.set_notice(session=session, token=current_viewer().token, notice=notice)
    return redirect(url_for(endpoint, **values), code=303)


def safe_next(target: str) -> bool:
    """Whether a sign-in may send the browser on to `target`: a dashboard address on this
    site, in printable ASCII (no CR/LF or other control characters that would break the
    Location header, no backslash a browser reads as a slash), no dot segments."""
    path = target.partition("?")[0]
    return (
        0 < len(target) <= NEXT_LIMIT
        and (path == "/admin" or path.startswith("/admin/"))
        and all("\x21" <= c <= "\x7e" for c in target)
        and "\\" not in target
        and not {".", ".."} & set(path.split("/"))
    )


def audit_action(session: Any, action: str, target: str = "", **detail: Any) -> None:
    viewer = current_viewer()
    dashboard.audit(
        session=session,
        actor=viewer.actor,
        key_id=viewer.key_id,
        action=action,
        target=target,
        detail=detail,
    )


def date_arg(name: str) -> datetime | None:
    """The query's `name` as an aware UTC time (no zone: UTC), None when absent."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        given = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{name}: {raw!r} is not a date and time", param=name) from None
    try:
        value = given.astimezone(UTC) if given.tzinfo else given.replace(tzinfo=UTC)
    except OverflowError:  # its zone moves it past year 1 or 9999
        value = LATEST
    if not EARLIEST <= value < LATEST:
        raise InvalidRequest(
            f"{name}: {raw!r} is not between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}", param=name
        )
    return value
