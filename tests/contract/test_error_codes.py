"""The request error codes have one registry (daikon/errors.py): every raise site names its code
from it, and the spec and docs list them from it."""

from __future__ import annotations

import ast
import re
from http import HTTPStatus
from typing import Any

from api.reference import shipped_spec
from daikon.errors import RequestErrorCode
from tests.stack import ROOT

# The server's code; the client only reads the codes it is answered with.
SERVER_CODE = ("api", "daikon", "db")
CLIENT_CODE = ROOT / "daikon" / "client"


def _literals(value: ast.expr) -> list[str]:
    """String literals a `code` value is, or falls back to (`x or "..."`, `a if c else "..."`)."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return [value.value]
    if isinstance(value, ast.BoolOp):
        return [s for v in value.values for s in _literals(v)]
    if isinstance(value, ast.IfExp):
        return _literals(value.body) + _literals(value.orelse)
    return []


def _code_sites() -> tuple[list[str], int]:
    """(`code` arguments and assignments holding a string literal, registry references)."""
    literal, registered = [], 0
    for top in SERVER_CODE:
        for path in sorted((ROOT / top).rglob("*.py")):
            if CLIENT_CODE in path.parents:
                continue
            where = path.relative_to(ROOT)
            for node in ast.walk(ast.parse(path.read_text())):
                values: list[ast.expr] = []
                if isinstance(node, ast.keyword) and node.arg == "code":
                    values.append(node.value)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if node.value is not None and any(
                        isinstance(t, ast.Name) and t.id == "code" for t in targets
                    ):
                        values.append(node.value)
                for value in values:
                    literal += [f"{where}:{value.lineno}: {s!r}" for s in _literals(value)]
                    registered += "RequestErrorCode" in ast.unparse(value)
    return literal, registered


def test_no_raise_site_spells_its_code_as_a_string() -> None:
    literal, registered = _code_sites()
    assert literal == [], "name the code from daikon.errors.RequestErrorCode"
    assert registered > 30  # the walk does find the raise sites


def test_each_code_is_defined_once_with_an_error_status() -> None:
    codes = list(RequestErrorCode)
    assert len({c.value for c in codes}) == len(codes)
    for c in codes:
        assert c.name == c.value  # RequestErrorCode[code] looks a code up
        assert 400 <= HTTPStatus(c.status) < 600
        assert c.meaning and c.meaning.endswith("."), c


def test_the_spec_lists_the_registry_and_its_routes_agree_with_it() -> None:
    spec: dict[str, Any] = shipped_spec()
    listed = spec["components"]["x-error-codes"]
    assert listed == {
        c.value: {"status": c.status, "description": c.meaning} for c in RequestErrorCode
    }
    assert listed["too_many_active_jobs"] == {
        "status": 429,
        "description": RequestErrorCode.too_many_active_jobs.meaning,
    }
    # A route's error line that names a registered code names it under the code's status.
    named = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, reply in op["responses"].items():
                if int(status) < 400:
                    continue
                for word in re.findall(r"`([a-z_]+)`", reply["description"]):
                    if word in RequestErrorCode.__members__:
                        named += 1
                        assert RequestErrorCode[word].status == int(status), (path, method, word)
    assert named > 50


def test_the_docs_list_every_request_error_code() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("### Request error codes", 1)[1].split("### Job error codes", 1)[0]
    for c in RequestErrorCode:
        assert f"| `{c.value}` | {c.status} |" in section, c
