"""The dashboard in a real browser (Debian's chromium driven by Playwright; no browser download)
against a real stack: the API over HTTP, a Celery worker process, Redis, SQLite and the tiny
models. Each test saves screenshots of the pages it visits into docs/dashboard/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.stack import ADMIN_KEY, ROOT, Stack, running_stack, settings_for

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
SHOTS = ROOT / "docs" / "dashboard"
# Slow enough to watch (150 steps of 4 candidates at 64 px on a CPU), small enough for a
# CPU's job-size limit.
SLOW = {
    "prompt": "a red circle above a blue square",
    "width": 64,
    "height": 64,
    "candidates": 4,
    "top_k": 2,
    "steps": 150,
}
FAST = {"prompt": "a green triangle", "steps": 4, "candidates": 2, "top_k": 2}


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("needs Debian's chromium: apt-get install -y chromium (.ci/run does)")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """A second model whose weights are missing: its jobs fail (model_load_failed)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    sd, clip = (str(p) for p in tiny_models)
    models = {
        "default": {"pipeline": sd, "clip": clip},
        "broken": {"pipeline": str(tmp / "no-such-model"), "clip": clip},
    }
    with running_stack(settings_for(tmp, redis_url, tiny_models, models=models), tmp) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield b
        b.close()


def sign_in(browser: Any, stack: Stack, key: str) -> Any:
    """A fresh browser context (its own cookies), signed in with `key`."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(stack.url("/admin/login"))
    page.fill("input[name=key]", key)
    page.click("button[type=submit]")
    page.wait_for_url(stack.url("/admin/"))
    # The key is nowhere in the browser's storage: only the session cookie, HttpOnly.
    cookies = context.cookies()
    assert [c["name"] for c in cookies] == ["daikon_admin"]
    assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert key not in cookies[0]["value"]
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("JSON.stringify(localStorage) + JSON.stringify(sessionStorage)") == "{}{}"
    return page


@pytest.fixture
def admin(browser: Any, stack: Stack) -> Iterator[Any]:
    page = sign_in(browser, stack, ADMIN_KEY)
    yield page
    page.context.close()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def eventually(check: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.2)


def test_a_submitted_job_appears_moves_and_is_canceled_without_reload(
    admin: Any, stack: Stack
) -> None:
    admin.goto(stack.url("/admin/jobs"))
    admin.evaluate("window.sameDocument = true")  # gone if the page ever reloads
    job = stack.submit(**SLOW)
    row = admin.locator(f'tr[data-job="{job["id"]}"]')
    row.wait_for()  # appeared in the table, polled in
    row.locator("progress").wait_for(timeout=90_000)  # running, with its progress bar
    assert admin.evaluate("window.sameDocument") is True
    shot(admin, "jobs")

    row.locator("a").click()
    admin.wait_for_url(f"**/admin/jobs/{job['id']}")
    admin.evaluate("window.sameDocument = true")
    bar = admin.locator("#job-progress")
    first = int(bar.get_attribute("value"))
    eventually(
        lambda: int(admin.locator("#job-progress").get_attribute("value")) > first,
        what="the progress bar moved",
    )
    assert admin.evaluate("window.sameDocument") is True
    shot(admin, "job-running")

    admin.click("#cancel-job")
    admin.locator("#job-status", has_text="canceled").wait_for()
    assert stack.get(job["id"])["status"] == "canceled"
    assert admin.locator("#cancel-job").count() == 0
    assert admin.locator("#retry-job").count() == 1


def test_retry_a_failed_job_and_see_the_new_one_linked(admin: Any, stack: Stack) -> None:
    failed = stack.wait(stack.submit(**FAST, model="broken")["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_load_failed"
    admin.goto(stack.url(f"/admin/jobs/{failed['id']}"))
    assert "model_load_failed" in admin.locator("#job-error").inner_text()
    admin.click("#retry-job")
    admin.locator("#retry-of").wait_for()  # now on the new job's page
    new_id = admin.url.split("/admin/jobs/")[1].split("?")[0]
    assert new_id != failed["id"]
    assert admin.locator("#retry-of").inner_text() == failed["id"]
    new = stack.get(new_id)
    assert new["params"] == failed["params"]
    stack.wait(new_id)
    admin.goto(stack.url(f"/admin/jobs/{failed['id']}"))
    assert admin.locator("a.retried-as").inner_text() == new_id
    shot(admin, "job-failed")


def test_a_paused_queue_holds_its_jobs_until_resumed(admin: Any, stack: Stack) -> None:
    admin.goto(stack.url("/admin/queues"))
    admin.locator('tr[data-model="default"] button.pause').click()
    admin.locator('tr[data-model="default"] .badge.paused').wait_for()
    job = stack.submit(**FAST)
    admin.goto(stack.url(f"/admin/jobs/{job['id']}"))
    admin.locator("#job-paused").wait_for()
    time.sleep(6)  # two of the worker's looks at it (every ~3 s): it must stay queued
    assert stack.get(job["id"])["status"] == "queued"
    assert admin.locator("#job-status").inner_text() == "queued"
    shot(admin, "job-paused")
    admin.goto(stack.url("/admin/queues"))
    shot(admin, "queues")
    admin.locator('tr[data-model="default"] button.resume').click()
    admin.locator('tr[data-model="default"] .badge.ok').wait_for()
    admin.goto(stack.url(f"/admin/jobs/{job['id']}"))
    admin.locator("#job-status", has_text="succeeded").wait_for(timeout=90_000)
    assert admin.locator("#images img").count() == 2
    shot(admin, "job")


def test_create_and_revoke_a_key(admin: Any, stack: Stack) -> None:
    admin.goto(stack.url("/admin/tenants"))
    admin.fill("#create-tenant input[name=name]", "acme")
    admin.click("#create-tenant button")
    admin.locator("h1", has_text="Tenant acme").wait_for()
    tenant_page = admin.url.split("?")[0]
    admin.fill("#create-key input[name=name]", "web")
    admin.click("#create-key button")
    key = admin.locator("#new-key").inner_text()
    assert key.startswith("dk_")
    shot(admin, "tenant")
    api = {"Authorization": f"Bearer {key}"}
    assert requests.get(stack.url("/v1/jobs"), headers=api, timeout=10).status_code == 200
    admin.goto(tenant_page)  # the key is never shown again
    assert key not in admin.content()
    admin.locator(f'tr[data-prefix="{key[:10]}"] button.revoke').click()
    admin.locator("p.notice", has_text="revoked").wait_for()
    r = requests.get(stack.url("/v1/jobs"), headers=api, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    admin.goto(stack.url("/admin/tenants"))
    shot(admin, "tenants")


def test_a_read_only_operator_sees_no_action_and_gets_403(browser: Any, stack: Stack) -> None:
    tenant = stack.http.post(stack.url("/v1/admin/tenants"), json={"name": "ops"}, timeout=10)
    made = stack.http.post(
        stack.url(f"/v1/admin/tenants/{tenant.json()['id']}/keys"),
        json={"name": "viewer", "scope": "operator"},
        timeout=10,
    )
    job = stack.submit(**SLOW)
    page = sign_in(browser, stack, made.json()["key"])
    try:
        assert page.locator("#role").inner_text() == "read-only operator"
        for path in (
            f"/admin/jobs/{job['id']}",
            "/admin/queues",
            "/admin/tenants",
            f"/admin/tenants/{tenant.json()['id']}",
        ):
            page.goto(stack.url(path))
            assert page.locator("form[method=post]").count() == 1, path  # only "Sign out"
            assert page.locator("#cancel-job, button.pause, button.revoke").count() == 0
        token = page.locator("header input[name=csrf_token]").get_attribute("value")
        status = page.evaluate(
            """async ([url, token]) => {
                const body = new URLSearchParams({csrf_token: token});
                return (await fetch(url, {method: "POST", body})).status;
            }""",
            [stack.url(f"/admin/jobs/{job['id']}/cancel"), token],
        )
        assert status == 403
        assert stack.get(job["id"])["status"] in ("queued", "running")
        page.goto(stack.url(f"/admin/jobs/{job['id']}"))
        shot(page, "operator")
    finally:
        page.context.close()
        stack.http.post(stack.url(f"/v1/jobs/{job['id']}/cancel"), timeout=10)


def test_a_form_posted_without_its_csrf_token_is_refused(admin: Any, stack: Stack) -> None:
    admin.goto(stack.url("/admin/queues"))
    form = admin.locator('tr[data-model="default"] form')
    form.locator("input[name=csrf_token]").evaluate("el => el.remove()")
    form.locator("button.pause").click()
    admin.locator("#message", has_text="CSRF token is missing or wrong").wait_for()
    admin.goto(stack.url("/admin/queues"))
    assert admin.locator('tr[data-model="default"] .badge.ok').count() == 1  # not paused


def test_the_overview_charts_usage_and_audit(admin: Any, stack: Stack) -> None:
    stack.wait(stack.submit(**FAST)["id"])
    admin.goto(stack.url("/admin/"))
    admin.locator("#charts svg").first.wait_for()
    assert admin.locator("#charts svg").count() == 3
    eventually(
        lambda: admin.locator("#worker-table td", has_text="default").count() > 0,
        what="the worker is listed with its model",
    )
    before = admin.locator("#total-queued").inner_text()
    jobs = [stack.submit(**SLOW) for _ in range(2)]  # one runs, one waits
    eventually(
        lambda: admin.locator("#total-queued").inner_text() != before,
        what="the queued figure updated without reload",
    )
    shot(admin, "overview")
    for job in jobs:
        stack.http.post(stack.url(f"/v1/jobs/{job['id']}/cancel"), timeout=10)
    admin.goto(stack.url("/admin/usage"))
    assert admin.locator("#usage td", has_text="admin").count() == 1
    shot(admin, "usage")
    admin.goto(stack.url("/admin/audit"))
    actions = admin.locator("#audit tr[data-action]").evaluate_all(
        "rows => rows.map(r => r.dataset.action)"
    )
    assert "login" in actions
    shot(admin, "audit")
    admin.goto(stack.url("/admin/login"))
    shot(admin, "login")
