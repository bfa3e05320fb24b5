"""The client installs alone: `pip install <checkout>` gives the contract, the Python client and
the `daikon` command with their own few dependencies, and none of the server's (no Flask,
Celery, SQLAlchemy, boto3, torch...) and none of its packages (api, db, worker, server are run
from the checkout, never installed). The installed command then generates against a real stack.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from tests.stack import ADMIN_KEY, ROOT, Stack, running_stack, settings_for

# What a client user must not get: the server's libraries and the model stack.
SERVER_DISTRIBUTIONS = {
    "flask",
    "celery",
    "sqlalchemy",
    "boto3",
    "botocore",
    "psycopg",
    "psycopg-binary",
    "torch",
    "diffusers",
    "transformers",
    "gunicorn",
    "redis",
}
# What the checkout ignores (.gitignore) and a build must not see: a stale build/lib would be
# packed into the wheel, a venv would be copied for nothing.
NOT_SOURCE = (".git", ".venv", ".daikon", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def base_dependencies() -> set[str]:
    """The distributions `pip install <checkout>` brings, by name (no extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match, requirement
        names.add(canonical(match.group()))
    return names


def server_packages() -> set[str]:
    """The checkout's top-level packages other than the client: the server's application."""
    return {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"daikon"}


def imports_of(path: Path) -> Iterator[str]:
    """The top-level names `path` imports absolutely, wherever the statement is (a function's
    late import or an `if TYPE_CHECKING:` block needs its distribution as much)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_the_client_package_imports_only_the_stdlib_and_its_declared_dependencies() -> None:
    base = base_dependencies()
    # `daikon` itself maps to the checkout's own distribution, whatever it installed.
    providers = {
        name: {canonical(d) for d in dists} - {"daikon"}
        for name, dists in packages_distributions().items()
    }
    server = server_packages()
    used: set[str] = set()
    wrong: list[str] = []
    for path in sorted((ROOT / "daikon").rglob("*.py")):
        where = path.relative_to(ROOT)
        for name in sorted(set(imports_of(path))):
            if name == "daikon" or name in sys.stdlib_module_names:
                continue
            if name in server:
                wrong.append(f"{where} imports {name}, the server's code (not installed)")
                continue
            dists = providers.get(name, set())
            if not dists & base:
                wrong.append(
                    f"{where} imports {name} (from {sorted(dists) or 'no distribution'}), "
                    "not a base dependency in pyproject.toml"
                )
            used |= dists & base
    assert not wrong, "\n".join(wrong)
    # ... and every base dependency is there for an import: a client gets nothing it never uses.
    assert used == base, f"declared but never imported by daikon/: {sorted(base - used)}"


def test_pyproject_installs_only_the_client_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["daikon", "daikon.*"]
    assert not base_dependencies() & SERVER_DISTRIBUTIONS


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, tiny_models) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("client-install")
    with running_stack(settings_for(tmp, redis_url, tiny_models), tmp) as s:
        yield s


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the checkout on the import path (the suite runs with it) or
    another venv active: what a client user's shell has."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def run(argv: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"{argv}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(1200)
def test_pip_install_of_the_checkout_is_the_client_alone_and_it_generates(
    stack: Stack, tmp_path: Path
) -> None:
    # The checkout as pip would get it from git: its files, without builds or venvs.
    source = tmp_path / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path)
    py = venv / "bin" / "python"
    run([py, "-m", "pip", "install", "-q", source], tmp_path)

    listed = json.loads(run([py, "-m", "pip", "list", "--format", "json"], tmp_path).stdout)
    installed = {canonical(d["name"]): d["version"] for d in listed}
    print("pip list:", " ".join(f"{n}=={v}" for n, v in sorted(installed.items())))
    assert "daikon" in installed
    assert not installed.keys() & SERVER_DISTRIBUTIONS, sorted(installed.keys())

    # Nothing of the server's is importable from anywhere but its checkout.
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {sorted(server_packages())!r} "
        "if importlib.util.find_spec(m)]))"
    )
    assert json.loads(run([py, "-c", probe], tmp_path).stdout) == []

    daikon = venv / "bin" / "daikon"
    usage = run([daikon, "--help"], tmp_path).stdout
    assert "generate" in usage and "Usage" in usage

    out = tmp_path / "images"
    quick = ["--candidates", "2", "--top-k", "1", "--steps", "3", "--seed", "7"]
    generated = run(
        [daikon, "generate", "a red circle above a blue square", *quick, "--out", out],
        tmp_path,
        DAIKON_URL=stack.base_url,
        DAIKON_API_KEY=ADMIN_KEY,
        COLUMNS="200",
    )
    found = re.search(r"Submitted job (\S+)", generated.stderr)
    assert found, generated.stderr
    job = stack.get(found.group(1))
    assert job["status"] == "succeeded" and len(job["images"]) == 1
    (saved,) = out.iterdir()
    image = job["images"][0]
    assert saved.name == f"{job['id']}-rank1-clip{image['clip_score']:.2f}.png"
    data = saved.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data == stack.http.get(image["url"], timeout=10).content
