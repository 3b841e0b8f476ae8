"""Signed cookies with serializers built once per app instead of once per request.

Quart's session interface and Quart-Auth both construct an itsdangerous
serializer for every request (and itsdangerous probes its serializer with a
``dumps({})`` each time): a measurable slice of the protected hot path. The
keys only change when the app's configuration does, so the serializer is
cached against them.

Neither tries zlib on what it signs (``PlainSerializer``): the auth cookie
carries a random secret and the session a CSRF token or a flash message,
which do not shrink, while setting up a compressor costs more than the rest
of the signing. Cookies signed compressed (before) still load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin
from quart import Quart
from quart.sessions import SecureCookieSessionInterface


class PlainPayload:
    """For a URL-safe itsdangerous serializer: write the payload uncompressed (read either form)."""

    def dump_payload(self, obj: Any) -> bytes:
        # The JSON as Serializer writes it, base64 without the compression step.
        return base64_encode(super(URLSafeSerializerMixin, self).dump_payload(obj))  # type: ignore[misc]


class PlainSerializer(PlainPayload, URLSafeTimedSerializer):
    pass


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
            lambda keys: PlainSerializer(
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
