"""The `daikon` command, run as a user runs it (a subprocess, on a pipe or a terminal) against a
real stack: images saved with their rank and CLIP score and the job's bytes, progress that
moves, Ctrl-C asking to cancel, JSON for scripts, and the API's errors with exit code 2."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.stack import ADMIN_KEY, ROOT, Stack, running_stack, settings_for

pytestmark = pytest.mark.e2e
QUICK = ["--steps", "3", "--candidates", "2", "--top-k", "1"]
LONG = ["--steps", "150", "--candidates", "4", "--top-k", "1"]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("cli")
    with running_stack(settings_for(tmp, redis_url, tiny_models), tmp) as s:
        yield s


def env_for(stack: Stack, key: str = ADMIN_KEY) -> dict[str, str]:
    return {**os.environ, "DAIKON_URL": stack.base_url, "DAIKON_API_KEY": key, "COLUMNS": "200"}


def daikon(
    stack: Stack, *args: str, key: str = ADMIN_KEY, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`daikon ARGS` (the console script's module), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "daikon.cli", *args],
        env=env_for(stack, key),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def api_error(stack: Stack, method: str, path: str, **kw: Any) -> dict[str, Any]:
    r = stack.http.request(method, stack.url(path), timeout=10, **kw)
    assert r.status_code >= 400, r.text
    return dict(r.json()["error"])


def test_generate_saves_the_kept_images_with_rank_and_score_and_the_jobs_bytes(
    stack: Stack, tmp_path: Path
) -> None:
    out = tmp_path / "images"
    run = daikon(
        stack,
        "generate",
        "a red circle above a blue square",
        "--candidates",
        "4",
        "--top-k",
        "2",
        "--seed",
        "7",
        "--steps",
        "30",
        "--out",
        str(out),
        "--wait",
    )
    assert run.returncode == 0, run.stderr
    job_id = re.search(r"Submitted job (\S+)", run.stderr).group(1)  # type: ignore[union-attr]
    job = stack.get(job_id)
    assert job["status"] == "succeeded" and len(job["images"]) == 2

    names = sorted(p.name for p in out.iterdir())
    expected = [f"{job_id}-rank{i['rank']}-clip{i['clip_score']:.2f}.png" for i in job["images"]]
    assert names == sorted(expected)
    for image in job["images"]:
        path = out / f"{job_id}-rank{image['rank']}-clip{image['clip_score']:.2f}.png"
        assert path.read_bytes() == stack.http.get(image["url"], timeout=10).content
        assert str(path) in run.stdout  # it says where they are

    # On a pipe, the progress is one line per change: it moves, step by step, to the end.
    seen = re.findall(rf"{job_id} running, step (\d+)/(\d+)", run.stderr)
    steps = [int(step) for step, _ in seen]
    assert len(steps) >= 2 and steps == sorted(steps) and len(set(steps)) == len(steps), seen
    assert {total for _, total in seen} == {"30"}  # 4 candidates in one batch of 30 steps
    assert f"{job_id} succeeded" in run.stderr


def test_no_wait_json_show_wait_and_jobs_are_for_scripts(stack: Stack, tmp_path: Path) -> None:
    submitted = daikon(stack, "generate", "a blue square", *QUICK, "--no-wait", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "queued" and job["params"]["prompt"] == "a blue square"

    waited = daikon(stack, "wait", job["id"], "--json", "--out", str(tmp_path))
    assert waited.returncode == 0, waited.stderr
    done = json.loads(waited.stdout)
    assert done["status"] == "succeeded" and done["id"] == job["id"]
    assert len(list(tmp_path.glob(f"{job['id']}-rank1-clip*.png"))) == 1

    shown = json.loads(daikon(stack, "show", job["id"], "--json").stdout)
    assert shown == stack.get(job["id"])
    listed = json.loads(daikon(stack, "jobs", "--json", "--limit", "3").stdout)
    assert len(listed) <= 3 and listed[0]["id"] == job["id"]

    plain = daikon(stack, "generate", "a green triangle", *QUICK, "--no-wait")
    assert plain.returncode == 0 and re.fullmatch(r"[0-9a-f-]{36}\n", plain.stdout)
    later = json.loads(daikon(stack, "jobs", "--json", "--created-after", job["created_at"]).stdout)
    assert plain.stdout.strip() in [j["id"] for j in later]
    assert job["id"] not in [j["id"] for j in later]  # strictly after
    table = daikon(stack, "jobs", "--status", "queued", "--limit", "50").stdout
    assert plain.stdout.strip() in table or stack.get(plain.stdout.strip())["status"] != "queued"


def test_generate_with_image_and_mask_inpaints_an_earlier_image(
    stack: Stack, tmp_path: Path
) -> None:
    first = json.loads(
        daikon(
            stack,
            "generate",
            "a red circle",
            *QUICK,
            "--seed",
            "3",
            "--out",
            str(tmp_path),
            "--json",
        ).stdout
    )
    (saved,) = tmp_path.glob(f"{first['id']}-rank1-*.png")
    picture = Image.open(saved)
    mask = Image.new("L", picture.size, 0)
    mask.paste(255, (0, 0, picture.width // 2, picture.height))
    mask.save(tmp_path / "mask.png")
    run = daikon(
        stack,
        "generate",
        "a blue square",
        *QUICK,
        "--image",
        str(saved),
        "--mask",
        str(tmp_path / "mask.png"),
        "--out",
        str(tmp_path / "edit"),
        "--json",
    )
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded" and job["params"]["mode"] == "inpaint"
    assert {i["role"] for i in job["inputs"]} == {"image", "mask"}
    (result,) = (tmp_path / "edit").glob("*.png")
    kept = np.asarray(Image.open(result).convert("RGB"))[:, picture.width // 2 :]
    assert np.array_equal(kept, np.asarray(picture.convert("RGB"))[:, picture.width // 2 :])
    by_id = daikon(
        stack,
        "generate",
        "a green circle",
        *QUICK,
        "--image-id",
        first["images"][0]["id"],
        "--strength",
        "0.5",
        "--no-wait",
        "--json",
    )
    assert by_id.returncode == 0, by_id.stderr
    assert json.loads(by_id.stdout)["params"]["mode"] == "image"  # no mask: image-to-image
    missing = daikon(stack, "generate", "x", "--image", str(tmp_path / "nope.png"))
    assert missing.returncode == 2 and "nope.png" in missing.stderr


def test_idempotency_key_answers_the_same_job(stack: Stack) -> None:
    key = f"cli-{uuid.uuid4().hex}"
    first = daikon(stack, "generate", "twice", *QUICK, "--no-wait", "--idempotency-key", key)
    again = daikon(stack, "generate", "twice", *QUICK, "--no-wait", "--idempotency-key", key)
    assert first.returncode == again.returncode == 0
    assert first.stdout == again.stdout


class Terminal:
    """The command on a pseudo-terminal, as in a shell: Ctrl-C is a keystroke."""

    def __init__(self, stack: Stack, *args: str):
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x00\x28\x00\xc8\x00\x00\x00\x00")  # 40x200

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            # A shell runs a foreground command with Ctrl-C's default action, even where the
            # test run itself was started in the background (which ignores SIGINT).
            signal.signal(signal.SIGINT, signal.SIG_DFL)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daikon.cli", *args],
            env={**env_for(stack), "TERM": "xterm"},
            cwd=ROOT,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=controlling_terminal,
        )
        os.close(slave)
        self.seen = b""

    def expect(self, pattern: bytes, timeout: float = 90) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while True:
            match = re.search(pattern, ANSI.sub(b"", self.seen))
            if match:
                return match
            assert time.monotonic() < deadline, f"never saw {pattern!r}:\n{self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the command exited and closed the terminal
                    assert self.proc.poll() is not None
                    time.sleep(0.1)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def exit_code(self) -> int:
        code = self.proc.wait(60)
        os.close(self.master)
        return code


def test_ctrl_c_asks_and_yes_cancels_the_job(stack: Stack, tmp_path: Path) -> None:
    term = Terminal(stack, "generate", "a long one", *LONG, "--out", str(tmp_path))
    job_id = term.expect(rb"Submitted job ([0-9a-f-]{36})").group(1).decode()
    term.expect(rb"running\s.*\d+/150")  # the live bar shows steps
    assert stack.get(job_id)["status"] == "running"
    term.type(b"\x03")  # Ctrl-C
    term.expect(rf"Cancel job {job_id}\?".encode())
    term.type(b"y\r")
    term.expect(rf"Canceled job {job_id}".encode())
    assert term.exit_code() == 1
    assert stack.get(job_id)["status"] == "canceled"
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_and_no_leaves_the_job_running_then_cancel_stops_it(stack: Stack) -> None:
    term = Terminal(stack, "generate", "another long one", *LONG)
    job_id = term.expect(rb"Submitted job ([0-9a-f-]{36})").group(1).decode()
    term.expect(rb"running")
    term.type(b"\x03")
    term.expect(rb"Cancel job")
    term.type(b"n\r")
    term.expect(rf"daikon wait {job_id}".encode())
    assert term.exit_code() == 130
    assert stack.get(job_id)["status"] in ("queued", "running")
    canceled = daikon(stack, "cancel", job_id)
    assert canceled.returncode == 0 and f"Job {job_id} canceled." in canceled.stdout
    shown = daikon(stack, "wait", job_id)
    assert shown.returncode == 1 and f"Job {job_id} canceled" in shown.stderr


def test_a_bad_key_prints_the_apis_message_and_code_with_exit_2(stack: Stack) -> None:
    expected = api_error(stack, "GET", "/v1/jobs", headers={"Authorization": "Bearer dk_nope"})
    run = daikon(stack, "jobs", key="dk_nope")
    assert run.returncode == 2
    assert expected["message"] in run.stderr and expected["code"] in run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_bad_parameters_print_the_apis_message_and_leave_nothing(stack: Stack) -> None:
    before = len(stack.http.get(stack.url("/v1/jobs?limit=100"), timeout=10).json()["jobs"])
    expected = api_error(
        stack, "POST", "/v1/jobs", json={"prompt": "x", "candidates": 2, "top_k": 5}
    )
    run = daikon(stack, "generate", "x", "--candidates", "2", "--top-k", "5")
    assert run.returncode == 2
    assert expected["message"] in run.stderr and "invalid_request" in run.stderr
    assert "top_k" in run.stderr and "Traceback" not in run.stderr
    steps = daikon(stack, "generate", "x", "--steps", "0")
    assert steps.returncode == 2 and "steps" in steps.stderr
    after = len(stack.http.get(stack.url("/v1/jobs?limit=100"), timeout=10).json()["jobs"])
    assert after == before  # nothing was created

    usage = daikon(stack, "generate", "x", "--candidates", "many")
    assert usage.returncode == 2 and "Invalid value for '--candidates'" in usage.stderr
    missing = daikon(stack, "show", "no-such-job")
    assert missing.returncode == 2 and "not_found" in missing.stderr


def test_admin_tenants_and_keys(stack: Stack) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    made = daikon(stack, "tenants", "create", name, "--json")
    assert made.returncode == 0, made.stderr
    tenant = json.loads(made.stdout)
    assert name in daikon(stack, "tenants", "list").stdout

    created = daikon(stack, "keys", "create", tenant["id"], "--name", "web")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("dk_") and "shown only now" in created.stderr
    assert daikon(stack, "jobs", "--json", key=key).stdout.strip() == "[]"  # its own: none

    keys = json.loads(daikon(stack, "keys", "list", tenant["id"], "--json").stdout)["keys"]
    assert [k["name"] for k in keys] == ["web"] and key not in json.dumps(keys)
    revoked = daikon(stack, "keys", "revoke", keys[0]["id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    refused = daikon(stack, "jobs", key=key)
    assert refused.returncode == 2 and "invalid_api_key" in refused.stderr

    tenant_key_admin = daikon(stack, "tenants", "list", key=ADMIN_KEY)
    assert tenant_key_admin.returncode == 0
    models = daikon(stack, "models")
    assert models.returncode == 0 and "default" in models.stdout


def test_the_console_script_is_declared() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["daikon"] == "daikon.cli:main"
    from daikon.cli import main

    assert callable(main)
