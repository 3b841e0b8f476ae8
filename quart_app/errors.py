"""The one error format: ``{"error": message, "fields"?: {...}}`` for JSON, a page for browsers."""

from __future__ import annotations

import logging

from quart import Quart, has_request_context, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

import quart_login

from .db import is_outage, raised_by_database
from .exceptions import MESSAGES, DatabaseUnavailable, HashQueueFull, HTTPError
from .rendering import render

log = logging.getLogger(__name__)


def wants_json() -> bool:
    """True for API calls, WebSocket handshakes, and clients that prefer JSON over HTML (Flask-Login's AJAX case)."""
    if not has_request_context():  # a WebSocket: a refused handshake's body is JSON, never a page
        return True
    # The path, not the blueprint: a 404 or 405 under /api/ has no blueprint.
    if request.path == "/api" or request.path.startswith("/api/"):
        return True
    return quart_login.wants_json()


async def error_response(error: HTTPError):
    if wants_json():
        body: dict[str, object] = {"error": error.message}
        if error.fields:
            body["fields"] = error.fields
        return body, error.status, error.headers
    html = await render("error.html", status=error.status, message=error.message)
    return html, error.status, error.headers


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPError)
    async def _http_error(error: HTTPError):
        return await error_response(error)

    @app.errorhandler(HTTPException)
    async def _framework_error(error: HTTPException):
        if error.code is None or error.code < 400:
            return error
        message = MESSAGES.get(error.code, error.name)
        headers = {}
        if error.code == 405 and getattr(error, "valid_methods", None):
            headers["Allow"] = ", ".join(error.valid_methods)
        return await error_response(HTTPError(error.code, message, headers=headers))

    @app.errorhandler(HashQueueFull)
    async def _hashing_overloaded(_error: HashQueueFull):
        return await error_response(
            HTTPError(503, "The server is busy checking passwords; try again shortly.", headers={"Retry-After": "1"})
        )

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # Redis is optional
        pass
    else:

        @app.errorhandler(RedisConnectionError)
        @app.errorhandler(RedisTimeoutError)
        async def _redis_unavailable(error: Exception):
            log.warning("redis unavailable: %s", type(error).__name__)
            return await error_response(HTTPError(503, MESSAGES[503], headers={"Retry-After": "1"}))

    @app.errorhandler(DBAPIError)
    @app.errorhandler(PoolTimeout)
    @app.errorhandler(DatabaseUnavailable)
    async def _database_unavailable(error: Exception):
        # A lost or unusable connection or storage, a database the raw lookup
        # paths could not reach or a SQLite file locked past its busy timeout
        # or out of service (DatabaseUnavailable, from quart_app/db.py), or no
        # free pooled connection in time: the client may retry; nothing was
        # acknowledged. Any other database error ("no such table") is a bug: a 500.
        if isinstance(error, DBAPIError) and not is_outage(error):
            raise error
        orig = getattr(error, "orig", None)
        log.warning("database unavailable: %s", getattr(orig, "sqlite_errorname", None) or type(orig or error).__name__)
        return await error_response(HTTPError(503, MESSAGES[503], headers={"Retry-After": "1"}))

    @app.errorhandler(OSError)
    @app.errorhandler(TimeoutError)
    async def _driver_gave_up(error: Exception):
        # asyncpg's socket error or timeout on connect, on the pool's
        # pre-ping or on a statement, which SQLAlchemy passes on unwrapped.
        # The same error from anywhere else is a bug: a 500.
        if not raised_by_database(error):
            raise error
        return await _database_unavailable(error)
