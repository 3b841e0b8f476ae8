"""Security headers on every response that does not set them itself."""

from __future__ import annotations

from quart import Quart, Response, request

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
)


async def _security_headers(response: Response) -> Response:
    headers = response.headers
    # One pass over what the response has (werkzeug's Headers.setdefault
    # raises and catches a KeyError for every header it adds).
    present = {name.lower() for name, _ in headers.items()}
    for name, value in SECURITY_HEADERS:
        if name.lower() not in present:
            headers.add(name, value)
    if "cache-control" not in present and request.endpoint != "static":
        # Pages and API answers depend on who is logged in: never from a
        # cache, so the back button after logout shows no account data.
        headers.add("Cache-Control", "no-store")
    return response


def init_app(app: Quart) -> None:
    app.after_request(_security_headers)
