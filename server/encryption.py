"""Encryption at rest for secrets the service must read back: tenants' webhook signing secrets
(HMAC needs the secret itself, so it cannot be hashed the way API keys are).

Fernet (AES-128-CBC with HMAC-SHA256, from `cryptography`) through MultiFernet, so keys
rotate: the first key of DAIKON_ENCRYPTION_KEYS encrypts, every listed key decrypts, and
`python -m db.maintenance rotate-encryption-key` re-encrypts every stored secret under the
first key, after which the old keys can be dropped. Without DAIKON_ENCRYPTION_KEYS a key is
made once in DATA_DIR/encryption.key (0600), which suits one host; several hosts must share a
key from settings. Stored values carry a prefix; one without it is a secret from before
encryption and is encrypted the next time it is read.
"""

from __future__ import annotations

import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from server.private_files import read_or_create_secret
from server.settings import Settings

FERNET_PREFIX = "fernet:"


class DecryptionError(Exception):
    """A stored secret no configured key opens (a key was dropped too early)."""


class Cipher:
    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one encryption key is needed")
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])

    def encrypt(self, plain: str) -> str:
        return FERNET_PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, stored: str) -> str:
        if not is_encrypted(stored):
            return stored  # from before encryption at rest
        try:
            return self._fernet.decrypt(stored.removeprefix(FERNET_PREFIX).encode()).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted with DAIKON_ENCRYPTION_KEYS "
                "(was a key removed before `python -m db.maintenance rotate-encryption-key` ran?)"
            ) from None

    def rotate(self, stored: str) -> str:
        """The value encrypted under the first key (plaintext from before, encrypted now)."""
        if not is_encrypted(stored):
            return self.encrypt(stored)
        rotated = self._fernet.rotate(stored.removeprefix(FERNET_PREFIX).encode())
        return FERNET_PREFIX + rotated.decode()


def is_encrypted(stored: str) -> bool:
    return stored.startswith(FERNET_PREFIX)


def keys(settings: Settings) -> list[str]:
    if settings.security.encryption_keys is not None:
        listed = settings.security.encryption_keys.get_secret_value().split(",")
        return [k.strip() for k in listed if k.strip()]
    path = settings.data_path / "encryption.key"
    return [read_or_create_secret(path, Fernet.generate_key().decode())]


@functools.cache
def _cipher(key_list: tuple[str, ...]) -> Cipher:
    return Cipher(list(key_list))


def cipher(settings: Settings) -> Cipher:
    """The deployment's cipher (built once per set of keys and process)."""
    return _cipher(tuple(keys(settings)))
