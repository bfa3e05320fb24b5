"""One declaration of the job's fields: the client's keyword arguments, the request the API
validates and the parameters the worker runs with are the contract's, by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daikon.client import Daikon
from daikon.client._base import Endpoints
from daikon.contract import GENERATION_FIELDS, JobParams, JobRequest
from tests.stack import ROOT


def test_submit_refuses_a_keyword_that_is_no_field_before_sending() -> None:
    # Nothing listens on port 9: a request sent would fail as a connection error instead.
    refused = pytest.raises(TypeError, match=r"unexpected keyword arguments \['sampler'\]")
    with Daikon("http://127.0.0.1:9", "dk_unused") as daikon, refused:
        daikon.submit("a red circle", sampler="euler")


def test_keywords_and_a_request_send_the_same_body() -> None:
    fields = {"candidates": 8, "top_k": 2, "mask_blur": 4, "mode": "inpaint"}
    by_keywords = Endpoints.submit("a red circle", "k", fields)
    by_model = Endpoints.submit(JobRequest(prompt="a red circle", **fields), "k", {})
    assert by_keywords.json == by_model.json == {"prompt": "a red circle", **fields}


def test_the_stored_parameters_are_the_requests_generation_fields() -> None:
    assert set(GENERATION_FIELDS) <= set(JobRequest.model_fields)
    assert list(JobParams.model_fields) == [*GENERATION_FIELDS, "defaulted"]


def test_a_type_checker_sees_submits_keywords(tmp_path: Path) -> None:
    """daikon/client/job_fields.py (generated from JobRequest) types `submit`'s keywords: mypy
    flags a value of the wrong type and a name that is no field, and passes the right ones."""
    user = tmp_path / "user.py"
    user.write_text(
        "from daikon.client import Daikon\n"
        "d = Daikon('http://x', 'dk_x')\n"
        "d.submit('ok', steps=20, mode='inpaint', webhook_events=['job.succeeded'])\n"
        "d.submit('bad', steps='twenty')\n"
        "d.submit('bad', sampler='euler')\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", str(user)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    flagged = {int(line.split(":")[1]) for line in run.stdout.splitlines() if ": error:" in line}
    assert flagged == {4, 5}, run.stdout
    assert '"steps"' in run.stdout and '"sampler"' in run.stdout
