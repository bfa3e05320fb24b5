"""The import arrows: api never loads torch/diffusers/transformers, and never imports worker."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.stack import ROOT

HEAVY = ("torch", "diffusers", "transformers")


def test_building_the_api_loads_no_model_libraries(tmp_path: Path) -> None:
    code = (
        "import sys; from api import create_app;"
        f"app = create_app(data_dir={str(tmp_path)!r}, database_url='sqlite://');"
        "app.test_client().get('/healthz');"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_import_arrows_point_one_way() -> None:
    assert not imported_top_levels("api") & {"worker", *HEAVY}
    assert not imported_top_levels("worker") & {"api", "flask"}
    assert not imported_top_levels("db") & {"api", "worker", "flask", *HEAVY}
    assert not imported_top_levels("daikon") & {"api", "worker", "db", "flask", *HEAVY}
