"""One declaration of the job's fields: the client's keyword arguments, the request the API
validates and the parameters the worker runs with are the contract's, by name."""

from __future__ import annotations

import pytest

from daikon.client import Daikon
from daikon.client._base import Endpoints
from daikon.contract import GENERATION_FIELDS, JobParams, JobRequest


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
