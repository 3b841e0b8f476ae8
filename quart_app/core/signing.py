"""Signed cookies with serializers built once per app instead of once per request.

Quart's session interface and Quart-Auth both construct an itsdangerous
serializer for every request (and itsdangerous probes its serializer with a
``dumps({})`` each time): a measurable slice of the protected hot path. The
keys only change when the app's configuration does, so the serializer is
cached against them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from itsdangerous import URLSafeTimedSerializer
from quart import Quart
from quart.sessions import SecureCookieSessionInterface


def signing_keys(app: Quart) -> tuple[Any, ...]:
    """Fallback keys first, the current key last (what itsdangerous expects)."""
    return (*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key)


class SerializerCache:
    """One serializer per set of keys; rebuilt only if the keys change."""

    def __init__(self, build: Callable[[list[Any]], URLSafeTimedSerializer]) -> None:
        self._build = build
        self._keys: tuple[Any, ...] | None = None
        self._serializer: URLSafeTimedSerializer | None = None

    def get(self, app: Quart) -> URLSafeTimedSerializer:
        keys = signing_keys(app)
        if self._serializer is None or keys != self._keys:
            self._serializer = self._build(list(keys))
            self._keys = keys
        return self._serializer


class CachedSessionInterface(SecureCookieSessionInterface):
    """Quart's signed-cookie session, with its serializer cached."""

    def __init__(self) -> None:
        self._cache = SerializerCache(
            lambda keys: URLSafeTimedSerializer(
                keys,
                salt=self.salt,
                serializer=self.serializer,
                signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
            )
        )

    def get_signing_serializer(self, app: Quart) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        return self._cache.get(app)
