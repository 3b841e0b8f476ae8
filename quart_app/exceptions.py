"""The app's exceptions, in a leaf module: every layer raises them, only ``errors.py`` turns them into answers."""

from __future__ import annotations

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


class ValidationError(HTTPError):
    """400 with a message per field; the form is shown again with them."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(400, INVALID_FIELDS, fields=fields)


class DatabaseUnavailable(Exception):
    """The database could not be reached, or did not answer in time: nothing was done; retry later."""


class HashQueueFull(RuntimeError):
    """More password hashes are waiting than the configured bound: answer 503 at once."""
