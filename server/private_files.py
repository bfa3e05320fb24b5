"""The data directory holds secrets (the SQLite database with its webhook secrets, signing and
admin keys, the embedded valkey's password and data): it is 0700 and every file in it 0600, so
another user of a shared host can read none of it."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) as 0700, and tighten it if it existed."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)
    return path


def lock_down(root: Path) -> None:
    """Make every directory under `root` 0700 and every file 0600: a data directory made
    before these rules (or by hand) is tightened at start-up."""
    private_dir(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(dirpath, name), DIR_MODE)
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(os.path.join(dirpath, name), FILE_MODE)


def read_or_create_secret(path: Path, make: str | None = None) -> str:
    """A secret kept in a 0600 file, created once (atomically: a hard link never replaces a
    file another process made first), then read by every process that shares the folder."""
    if not path.exists():
        private_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        with os.fdopen(fd, "w") as f:
            f.write(make if make is not None else secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        tmp.unlink()
    return path.read_text().strip()
