"""Encryption of secrets at rest, and hashing of API keys.

Secrets are Fernet tokens (AES-128-CBC with HMAC-SHA256: authenticated, so a tampered or
foreign ciphertext fails loudly). TRACECAT_ENCRYPTION_KEYS holds a ring: the first key
encrypts, every key decrypts, which is what lets `keys rotate` retire an old key. With no
key configured, one is generated once into the data dir (mode 0600).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from tracecat.config import Settings
from tracecat.exceptions import DecryptionError, SettingsError

KEY_FILE = "encryption.key"
API_KEY_PREFIX = "tci_"


class Keyring:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise SettingsError("TRACECAT_ENCRYPTION_KEYS: no key configured")
        try:
            self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])
        except ValueError:
            raise SettingsError(
                "TRACECAT_ENCRYPTION_KEYS: each key must be 32 url-safe base64-encoded bytes "
                "(make one with `tracecat-integrations keys generate`)"
            ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        return cls(settings.tracecat_encryption_keys or [_key_from_file(settings.data_dir)])

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, ciphertext: bytes) -> str:
        try:
            return self._fernet.decrypt(ciphertext).decode()
        except InvalidToken:
            raise DecryptionError(
                "a stored secret cannot be decrypted with TRACECAT_ENCRYPTION_KEYS: "
                "keep the old key in the list until `keys rotate` has run"
            ) from None

    def rotate(self, ciphertext: bytes) -> bytes:
        """Re-encrypt under the first key (MultiFernet keeps the original timestamp)."""
        try:
            return self._fernet.rotate(ciphertext)
        except InvalidToken:
            raise DecryptionError("a stored secret cannot be decrypted with any key") from None


def _key_from_file(data_dir: Path) -> str:
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # O_EXCL: two processes starting at once must not each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(generate_key() + "\n")
    return path.read_text().strip()


def generate_key() -> str:
    return Fernet.generate_key().decode()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_secret(value: str) -> str:
    """A fast hash is right for 256-bit random keys: there is nothing to brute-force,
    and a slow password hash would cost every request."""
    return hashlib.sha256(value.encode()).hexdigest()
