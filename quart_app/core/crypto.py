"""Encryption at rest: Fernet with keys derived by HKDF from the app's key material (with fallbacks, for rotation).

Whatever the app keeps that a copy of the database must not give away (a
queued message's live links, a second factor's secret) is a Fernet token
(AES-128-CBC + HMAC-SHA256). The Fernet key is derived by HKDF-SHA256 from a
key the operator sets (QUART_APP_SECRET_KEY, or QUART_APP_MFA_KEY) with an
``info`` label of its own per use, so that no two uses share a key and no
derived key signs anything else. A ``Cipher`` encrypts with the first key of
its list and decrypts with any of them: data written before a rotation stays
readable while the old key is kept as a fallback (and ``is_current`` tells
whether to write it again under the new one).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["CannotDecrypt", "Cipher", "derive_bytes", "derive_key"]


class CannotDecrypt(Exception):
    """The data was encrypted with a key that is neither the current key nor one of its fallbacks."""


def derive_bytes(key_material: str, info: bytes, length: int = 32) -> bytes:
    """``length`` bytes derived from ``key_material`` for the use named by ``info`` (HKDF-SHA256, no salt)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info)
    return hkdf.derive(key_material.encode("utf-8"))


def derive_key(key_material: str, info: bytes) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) for ``key_material`` and the use ``info``."""
    return base64.urlsafe_b64encode(derive_bytes(key_material, info))


class Cipher:
    """Encrypts with the first of ``keys``, decrypts with any of them; ``info`` names the use."""

    def __init__(self, keys: Sequence[str], info: bytes) -> None:
        keys = [key for key in keys if key]
        if not keys:
            raise ValueError("a Cipher needs at least one key")
        if not info:
            raise ValueError("a Cipher needs an info label of its own")
        self.info = info
        self._current = Fernet(derive_key(keys[0], info))
        self._fernet = MultiFernet([self._current, *(Fernet(derive_key(key, info)) for key in keys[1:])])

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(bytes(token))
        except InvalidToken:
            raise CannotDecrypt("cannot decrypt (the key changed, and the old one is no fallback)") from None

    def is_current(self, token: bytes) -> bool:
        """Whether ``token`` was encrypted with the current key (else it is worth encrypting again)."""
        try:
            self._current.decrypt(bytes(token))
        except InvalidToken:
            return False
        return True
