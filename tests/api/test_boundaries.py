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
    assert not imported_top_levels("server") & {"api", "worker", "db", "flask", *HEAVY}


FIRST_PARTY = ("api", "worker", "db", "server", "daikon")


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """First-party module -> the first-party modules it imports, at any depth of the file
    (an import inside a function counts: a lazy import hides a circle, it does not remove it).
    `from package import name` points at the submodule when `name` is one."""
    modules = {module_of(p): p for top in FIRST_PARTY for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def test_no_import_circles_between_modules() -> None:
    """No module reaches itself again through its imports (lazy ones included)."""
    graph = import_graph()
    circles: list[list[str]] = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, [*path, nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert circles == []


def test_every_redis_key_name_is_written_in_server_keys() -> None:
    """Redis key names start with `daikon:` and are spelled in one module only."""
    spelled: list[str] = []
    for top in ("api", "worker", "db", "server"):
        for path in (ROOT / top).rglob("*.py"):
            if path == ROOT / "server" / "keys.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and node.value.startswith("daikon:")
                ):
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                if isinstance(node, ast.Name) and node.id == "PREFIX":
                    spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert spelled == []


def test_the_contract_imports_no_server_code() -> None:
    assert not imported_top_levels("daikon") & {"server", "api", "worker", "db"}
