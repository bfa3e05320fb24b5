"""Every test in tests/e2e/ starts real worker processes or the whole stack: marked `e2e` here,
by folder, so `make test-fast` (-m "not e2e ...") leaves them out without each file saying so."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collection hooks see the whole session's items: mark only this folder's."""
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.e2e)
