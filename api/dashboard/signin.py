"""Sign-in and sign-out: the only pages open without a session (common.PUBLIC). A key is
exchanged for a session cookie here; access.py says what a session may do."""

from __future__ import annotations

from datetime import timedelta

from flask import Response, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from api import openapi
from api.auth import identify
from api.dashboard import access
from api.dashboard.common import bp, current_viewer, render, safe_next
from api.services import services
from daikon.errors import BadRequest
from db import dashboard, tenants
from db.models import KeyScope
from db.session import session_scope


@bp.get("/login")
@openapi.hidden
def login_form() -> Response:
    token = access.new_login_token()
    target = request.args.get("next", "")
    resp = render("login.html", login_token=token, next=target if safe_next(target) else "")
    resp.set_cookie(
        access.LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=access.cookie_secure(),
        max_age=600,
        path="/admin",
    )
    return resp


@bp.post("/login")
@openapi.hidden
def login() -> BaseResponse:
    access.count_login_attempt()
    expected = request.cookies.get(access.LOGIN_COOKIE, "")
    if not expected:
        raise access.CsrfRefused("the sign-in form expired: reload it and retry")
    access.check_csrf(expected)
    # Before the key is looked at: a refused address leaves no session behind.
    target = request.form.get("next", "") or url_for("dashboard.overview")
    if not safe_next(target):
        raise BadRequest(
            "next: not an address of this dashboard (a path under /admin, in printable ASCII)",
            param="next",
        )
    key = request.form.get("key", "").strip()
    svc = services()
    with session_scope(svc.sessions) as session:
        holder = identify(session, key) if key else None
        if holder is None or holder.scope is KeyScope.tenant:
            return render(
                "login.html",
                401,
                login_token=expected,
                next="",
                error="That is not an admin or operator key (or it was revoked).",
            )
        dashboard.purge_sessions(session=session)
        token = dashboard.create_session(
            session=session,
            key_id=holder.key_id,
            key_hash=tenants.hash_key(key),
            secret=svc.signing_key,
            actor=holder.actor,
            scope=holder.scope,
            ttl=timedelta(hours=svc.settings.security.dashboard_session_hours),
        )
        dashboard.audit(
            session=session,
            actor=holder.actor,
            key_id=holder.key_id,
            action="login",
            detail={"scope": holder.scope.value},
        )
    resp = redirect(target, code=303)
    resp.set_cookie(
        access.COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=access.cookie_secure(),
        path="/admin",
        max_age=int(svc.settings.security.dashboard_session_hours * 3600),
    )
    resp.delete_cookie(access.LOGIN_COOKIE, path="/admin")
    return resp


@bp.post("/logout")
@openapi.hidden
def logout() -> BaseResponse:
    viewer = current_viewer()
    with session_scope(services().sessions) as session:
        dashboard.end_session(session=session, token=viewer.token)
        dashboard.audit(session=session, actor=viewer.actor, key_id=viewer.key_id, action="logout")
    resp = redirect(url_for("dashboard.login_form"), code=303)
    resp.delete_cookie(access.COOKIE, path="/admin")
    return resp
