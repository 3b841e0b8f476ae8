"""The auth cookie: Quart-Auth's signed cookie, carrying the session's secret.

Quart-Auth signs, reads and writes the cookie (and clears it); the extension
adds what it lacks. One private Quart-Auth API is replaced:
``QuartAuth._template_context``, the context processor that would put
Quart-Auth's own user in templates, becomes an async one giving
``quart_login``'s ``current_user`` (Quart runs a sync processor on a thread,
for every render).
"""

from __future__ import annotations

from typing import Any

from quart_auth import QuartAuth


class AuthCookie(QuartAuth):
    """Quart-Auth configured from ``QUART_LOGIN_*``; subclass it to change how tokens are signed."""

    async def _template_context(self) -> dict[str, Any]:
        from .utils import current_user

        return {"current_user": current_user._get_current_object()}
