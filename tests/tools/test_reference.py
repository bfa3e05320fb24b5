"""The generated docs are current, and say everything the code can answer."""

from __future__ import annotations

import ast

from api import reference
from daikon.contract import JOB_ERROR_CODES
from tests.stack import ROOT


def test_the_generated_docs_are_not_stale() -> None:
    assert reference.stale() == [], "run `make docs` and commit docs/api.md, configuration.md"


def test_every_job_error_code_the_worker_records_is_documented() -> None:
    codes: set[str] = set()
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "JobFailure":
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    codes.add(first.value)
    assert codes and codes <= set(JOB_ERROR_CODES), codes - set(JOB_ERROR_CODES)
    assert "worker_lost" in (ROOT / "db/jobs.py").read_text()


def test_every_setting_is_documented_with_its_variable() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    from server.settings import environment_variables

    missing = [name for name in environment_variables() if f"`{name}`" not in text]
    assert missing == []
