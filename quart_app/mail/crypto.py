"""The outbox's content at rest: quart_app.core.crypto's Cipher, keyed by the secret key (and its fallbacks).

A queued message holds live links (a password-reset token is as good as the
password for half an hour), so ``mail_outbox.content`` is never plain text:
it is a Fernet token of the JSON of the message's parts. The key is derived
by HKDF-SHA256 from QUART_APP_SECRET_KEY with the outbox's own ``info``, so
it is no key that signs or encrypts anything else. New content is encrypted
with the current key; content is decrypted with any of the current key and
QUART_APP_SECRET_KEY_FALLBACKS, so mail queued before a key rotation stays
readable while the old key is kept as a fallback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from ..core import crypto
from ..core.crypto import CannotDecrypt, Cipher

__all__ = ["INFO", "CannotDecrypt", "ContentCipher", "derive_key"]

INFO = b"quart_app.mail.outbox"


def derive_key(secret_key: str) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) of the outbox for ``secret_key``."""
    return crypto.derive_key(secret_key, INFO)


class ContentCipher:
    """A message's parts as JSON, encrypted with the first key, decrypted with any of them."""

    def __init__(self, secret_key: str, fallbacks: Iterable[str] = ()) -> None:
        self._cipher = Cipher([secret_key, *fallbacks], INFO)

    def encrypt(self, content: Mapping[str, str]) -> bytes:
        return self._cipher.encrypt(json.dumps(dict(content), ensure_ascii=False).encode("utf-8"))

    def decrypt(self, token: bytes) -> dict[str, str]:
        try:
            data = self._cipher.decrypt(token)
        except CannotDecrypt:
            raise CannotDecrypt("cannot decrypt (secret key changed)") from None
        return json.loads(data.decode("utf-8"))
