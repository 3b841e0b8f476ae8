"""The one error format: ``{"error": message, "fields"?: {...}}`` for JSON, a page for browsers."""

from __future__ import annotations

import logging

from pydantic import ValidationError as PydanticValidationError
from quart import Quart
from quart_schema import RequestSchemaValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from .core.security import HashQueueFull
from .db import DatabaseUnavailable, raised_by_database
from .rendering import render

log = logging.getLogger(__name__)

# Messages for the statuses the framework raises by itself.
MESSAGES = {
    400: "The request could not be understood.",
    401: "Authentication required.",
    403: "Forbidden.",
    404: "Not found.",
    405: "Method not allowed.",
    413: "Request body too large.",
    415: "Unsupported content type: send application/json.",
    429: "Too many requests.",
    503: "Service temporarily unavailable; try again shortly.",
}
INVALID_FIELDS = "Please correct the highlighted fields."


class HTTPError(Exception):
    """An error with a status and a message meant for the user."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields
        self.headers = headers or {}


def _wants_json() -> bool:
    # Imported here: the auth layer imports this module.
    from .auth.login_manager import wants_json

    return wants_json()


async def error_response(error: HTTPError):
    if _wants_json():
        body: dict[str, object] = {"error": error.message}
        if error.fields:
            body["fields"] = error.fields
        return body, error.status, error.headers
    html = await render("error.html", status=error.status, message=error.message)
    return html, error.status, error.headers


def schema_validation_error(error: RequestSchemaValidationError) -> HTTPError:
    """Quart-Schema's refusal of a body, query string or headers, in the contract's shape (400, ``fields``)."""
    cause = error.validation_error
    if not isinstance(cause, PydanticValidationError):
        return HTTPError(400, MESSAGES[400])
    fields: dict[str, str] = {}
    for problem in cause.errors(include_url=False, include_input=False):
        if not problem["loc"]:  # the body as a whole (not an object, say)
            return HTTPError(400, problem["msg"])
        fields.setdefault(".".join(str(part) for part in problem["loc"]), problem["msg"])
    return HTTPError(400, INVALID_FIELDS, fields=fields)


def register_error_handlers(app: Quart) -> None:
    @app.errorhandler(HTTPError)
    async def _http_error(error: HTTPError):
        return await error_response(error)

    @app.errorhandler(RequestSchemaValidationError)
    async def _schema_error(error: RequestSchemaValidationError):
        return await error_response(schema_validation_error(error))

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
        # A lost or unusable connection, a database the raw lookup path could
        # not reach or a SQLite file locked past its busy timeout
        # (DatabaseUnavailable, from quart_app/db.py), or no free pooled
        # connection in time: the client may retry; nothing was
        # acknowledged. Any other database error is a bug: a 500.
        if isinstance(error, DBAPIError) and not (
            error.connection_invalidated or isinstance(error, OperationalError | InterfaceError)
        ):
            raise error
        log.warning("database unavailable: %s", type(getattr(error, "orig", None) or error).__name__)
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
