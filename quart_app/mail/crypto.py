"""The outbox's content at rest: Fernet with keys derived from the secret key (and its fallbacks, for rotation).

A queued message holds live links (a password-reset token is as good as the
password for half an hour), so ``mail_outbox.content`` is never plain text:
it is a Fernet token (AES-128-CBC + HMAC-SHA256) of the JSON of the
message's parts. The key is derived by HKDF-SHA256 from QUART_APP_SECRET_KEY
with its own ``info``, so it is no key that signs anything else. New content
is encrypted with the current key; content is decrypted with any of the
current key and QUART_APP_SECRET_KEY_FALLBACKS, so mail queued before a key
rotation stays readable while the old key is kept as a fallback.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["INFO", "CannotDecrypt", "ContentCipher", "derive_key"]

INFO = b"quart_app.mail.outbox"


class CannotDecrypt(Exception):
    """The content was encrypted with a key that is neither the secret key nor one of its fallbacks."""


def derive_key(secret_key: str) -> bytes:
    """The Fernet key (url-safe base64 of 32 bytes) of the outbox for ``secret_key``."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret_key.encode("utf-8")))


class ContentCipher:
    """Encrypts with the first key, decrypts with any of them."""

    def __init__(self, secret_key: str, fallbacks: Iterable[str] = ()) -> None:
        keys = [secret_key, *fallbacks]
        self._fernet = MultiFernet([Fernet(derive_key(key)) for key in keys])

    def encrypt(self, content: Mapping[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(dict(content), ensure_ascii=False).encode("utf-8"))

    def decrypt(self, token: bytes) -> dict[str, str]:
        try:
            data = self._fernet.decrypt(bytes(token))
        except InvalidToken:
            raise CannotDecrypt("cannot decrypt (secret key changed)") from None
        return json.loads(data.decode("utf-8"))
