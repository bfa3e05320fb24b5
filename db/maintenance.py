"""Operator commands that work on the database directly.

    python -m db.maintenance new-encryption-key     # a fresh key for DAIKON_ENCRYPTION_KEYS
    python -m db.maintenance rotate-encryption-key  # re-encrypt stored secrets under the first

Rotating: put a new key first in DAIKON_ENCRYPTION_KEYS, keeping the old ones after it, restart
the processes, run `rotate-encryption-key`, then drop the old keys.
"""

from __future__ import annotations

import sys

from cryptography.fernet import Fernet

from db import deliveries
from db.session import make_engine, make_session_factory, session_scope
from server.encryption import cipher
from server.settings import Settings


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "new-encryption-key":
        print(Fernet.generate_key().decode())
        return 0
    if command == "rotate-encryption-key":
        settings = Settings()
        sessions = make_session_factory(make_engine(settings.sqlalchemy_url))
        with session_scope(sessions) as session:
            count = deliveries.reencrypt_secrets(session=session, cipher=cipher(settings))
        print(f"re-encrypted {count} webhook secrets under the first key")
        return 0
    print(
        "usage: python -m db.maintenance new-encryption-key | rotate-encryption-key",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
