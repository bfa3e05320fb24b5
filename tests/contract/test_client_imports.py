"""The contract, client and CLI stand alone: importing them loads nothing of the server (its
settings, Flask, Celery, the database, storage or torch), so a client installs and starts
without any of it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.stack import ROOT

SERVER_SIDE = {
    "server",
    "api",
    "db",
    "worker",
    "flask",
    "celery",
    "sqlalchemy",
    "boto3",
    "psycopg",
    "torch",
    "diffusers",
}

PROBE = f"""
import sys
import daikon.contract, daikon.client, daikon.cli
loaded = sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(SERVER_SIDE)!r}))
print(' '.join(loaded))
"""


def test_the_contract_client_and_cli_import_nothing_of_the_server() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAIKON_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == []
