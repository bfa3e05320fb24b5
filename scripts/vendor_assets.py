"""Front-end assets, vendored from their npm packages (never loaded from a CDN).

    python scripts/vendor_assets.py           # fetch the pinned versions into api/static/vendor
    python scripts/vendor_assets.py --check   # verify the committed files against the manifest

Each package is fetched with `npm pack NAME@VERSION` (npm verifies the tarball's integrity),
the listed files are copied under api/static/vendor/NAME/, and their SHA-256 go into
api/static/vendor/manifest.json, which tests/tools/test_vendor.py checks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "api" / "static" / "vendor"
MANIFEST = VENDOR / "manifest.json"

PACKAGES: dict[str, tuple[str, list[str]]] = {
    # OpenAPI 3.1 renderer for /docs.
    "swagger-ui-dist": (
        "5.35.0",
        [
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "LICENSE",
            "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt",
        ],
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch() -> None:
    manifest: dict[str, dict[str, object]] = {}
    for name, (version, files) in PACKAGES.items():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", f"{name}@{version}", "--silent"],
                cwd=tmp,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (tarball,) = Path(tmp).glob("*.tgz")
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            target = VENDOR / name
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for file in files:
                shutil.copy2(Path(tmp) / "package" / file, target / file)
        manifest[name] = {"version": version, "files": {f: sha256(target / f) for f in files}}
    MANIFEST.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def check() -> list[str]:
    """What differs from the manifest (empty when the vendored files are what it names)."""
    manifest = json.loads(MANIFEST.read_text())
    problems = []
    for name, (version, files) in PACKAGES.items():
        entry = manifest.get(name, {})
        if entry.get("version") != version:
            problems.append(f"{name}: manifest has {entry.get('version')}, wanted {version}")
        for file in files:
            path = VENDOR / name / file
            if not path.exists() or sha256(path) != entry.get("files", {}).get(file):
                problems.append(f"{name}/{file} differs from the manifest")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        found = check()
        print("\n".join(found) or "vendored assets match the manifest")
        sys.exit(1 if found else 0)
    fetch()
