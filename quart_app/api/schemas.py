"""The JSON API's bodies as pydantic models, and the decorators that put them in the OpenAPI document.

Request models document what a client sends; the rules themselves are
checked by ``auth/validation.py``, the one place the HTML forms share, so
their constraints are built from its constants. Success bodies are checked
at run time too (Quart-Schema's ``validate_response``): a response can carry
only the fields of its model, never a password hash.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, RootModel, ValidationError
from pydantic.json_schema import SkipJsonSchema
from quart import current_app
from quart_schema import (
    ResponseSchemaValidationError,
    document_request,
    document_response,
    security_scheme,
    validate_response,
)

from ..auth.validation import EMAIL_MAX, PASSWORD_MAX, PASSWORD_MIN, USERNAME_RE

F = TypeVar("F", bound=Callable[..., Any])

# The auth cookie, as the OpenAPI security scheme names it (see docs.py).
COOKIE_AUTH = "cookieAuth"

Username = Annotated[
    str,
    Field(
        pattern=f"^{USERNAME_RE.pattern}$",
        description="3 to 32 letters, digits, '_', '.' or '-'; unique without regard to case.",
        examples=["alice"],
    ),
]
Email = Annotated[
    str,
    Field(
        max_length=EMAIL_MAX,
        json_schema_extra={"format": "email"},
        description=(
            "A valid address, unique without regard to case; special-use domains (.test, .invalid, "
            ".localhost, …) are refused."
        ),
        examples=["alice@example.com"],
    ),
]
Password = Annotated[
    str,
    Field(
        min_length=PASSWORD_MIN,
        max_length=PASSWORD_MAX,
        description=f"{PASSWORD_MIN} to {PASSWORD_MAX} characters, any Unicode.",
        examples=["correct horse battery"],
    ),
]
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-01-01T12:00:00Z"])]
AuthMethod = Annotated[
    str,
    Field(
        description="`pwd` (password), `otp` (authenticator app), `rec` (recovery code) or `webauthn` (passkey).",
        examples=["pwd"],
    ),
]


# -- requests ------------------------------------------------------------------


class RegisterRequest(BaseModel):
    """A new account."""

    username: Username
    email: Email
    password: Password


class LoginRequest(BaseModel):
    """Credentials: the username field also takes the email."""

    username: str = Field(min_length=1, description="The username or the email.", examples=["alice"])
    password: str = Field(min_length=1, examples=["correct horse battery"])
    remember: bool = Field(
        default=False, description="A persistent cookie (the configured duration) instead of a session cookie."
    )


class SecondFactorRequest(BaseModel):
    """The second factor of a pending login (the `quart_app_mfa` cookie the password answer set)."""

    code: str = Field(
        min_length=1,
        max_length=64,
        description="The 6-digit code the authenticator app shows now, or an unused recovery code (`xxxxx-xxxxx`).",
        examples=["123456"],
    )


class PasswordChangeRequest(BaseModel):
    """The current password and the new one."""

    current_password: str = Field(min_length=1)
    new_password: Password


class ForgotPasswordRequest(BaseModel):
    """The address of the account: answered 202 whether an account uses it or not."""

    email: str = Field(min_length=1, json_schema_extra={"format": "email"}, examples=["alice@example.com"])


Token = Annotated[str, Field(min_length=1, description="The token of the mailed link (the last part of its path).")]


class ResetPasswordRequest(BaseModel):
    """The reset link's token and the new password."""

    token: Token
    new_password: Password


class VerifyEmailRequest(BaseModel):
    """The token of a verification or change-of-address link."""

    token: Token


class EmailChangeRequest(BaseModel):
    """The current password and the new address (it changes once the link mailed to it is confirmed)."""

    current_password: str = Field(min_length=1)
    new_email: Email


# -- responses -----------------------------------------------------------------


class Accepted(BaseModel):
    """Accepted: a message is on its way (or, for a reset request, no account uses the address: the same answer)."""


class PublicUser(BaseModel):
    """The user: never the password or its hash."""

    id: int
    username: str
    email: str


class MfaRequired(BaseModel):
    """The password was right, but the account has a second factor: no session yet.

    A pending login is bound to this client by its own cookie (`quart_app_mfa`,
    for `QUART_APP_MFA_PENDING_TTL` seconds); `POST /api/login/2fa` with a code finishes it.
    """

    mfa_required: Literal[True]
    methods: list[Literal["totp", "webauthn", "recovery_code"]] = Field(
        description=(
            "What the account's second step takes: a code of the authenticator app or a recovery code "
            "(`POST /api/login/2fa`), a passkey (`POST /api/login/2fa/webauthn`)."
        ),
        examples=[["totp", "recovery_code"]],
    )


class LoginAnswer(RootModel[PublicUser | MfaRequired]):
    """The public user (logged in), or, for an account with a second factor, that a code is required."""


class SecondFactorLogin(PublicUser):
    """The user, logged in with two factors."""

    recovery_codes_left: int | None = Field(
        ge=0,
        description="When a recovery code was used: how many unused ones are left (null for an authenticator code).",
    )


class Me(PublicUser):
    """The logged-in user, with whether the address is verified."""

    email_verified: bool = Field(description="Whether the address was confirmed by a mailed link.")


class SessionInfo(BaseModel):
    """One active session of the user (its id is not the cookie's secret)."""

    id: int
    created_at: Timestamp
    last_seen_at: Timestamp
    ip: str | None
    user_agent: str | None
    current: bool = Field(description="True for the session that made this request.")
    amr: list[AuthMethod] = Field(
        description="How the session was authenticated: the methods presented in it, in the order first presented."
    )
    auth_time: Timestamp | None = Field(
        description="When a factor was last presented in this session (null: never since it began)."
    )
    aal: int = Field(ge=1, description="Authenticator assurance level: 1 for one factor, 2 for two (or a passkey).")


class ErrorBody(BaseModel):
    """The one error shape; validation errors name each invalid field in `fields`."""

    error: str
    fields: dict[str, str] | SkipJsonSchema[None] = Field(
        default=None,
        # Absent, never null: keep pydantic's "default": null out of the document.
        json_schema_extra=lambda schema: schema.pop("default", None),
    )


# -- decorators ----------------------------------------------------------------


def body(model: type[BaseModel]) -> Callable[[F], F]:
    """Document ``model`` as the route's JSON request body (validated by the auth service)."""
    return document_request(model)


def returns(model: Any, status: int) -> Callable[[F], F]:
    """The success body: documented, and checked (and trimmed to the model's fields) at run time.

    For a model class, a dict answered with ``status`` is validated here, with
    the model's own (compiled once) validator, and handed on as the model:
    Quart-Schema would otherwise build a fresh pydantic TypeAdapter for it on
    every response.
    """

    def decorator(func: F) -> F:
        if isinstance(model, type) and issubclass(model, BaseModel):
            func = _as_model(func, model, status)
        return validate_response(model, status)(func)

    return decorator


def _as_model(func: F, model: type[BaseModel], status: int) -> F:
    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = await current_app.ensure_async(func)(*args, **kwargs)
        value, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        answered = rest[0] if rest and isinstance(rest[0], int) else 200
        if answered != status or not isinstance(value, dict):
            return result
        try:
            checked = model.model_validate(value)
        except ValidationError as error:
            raise ResponseSchemaValidationError(error) from None
        return (checked, *rest) if rest else checked

    return wrapper  # type: ignore[return-value]


def no_content(func: F) -> F:
    """Document a 204 answer without a body."""
    return document_response(None, 204)(func)


def errors(*statuses: int) -> Callable[[F], F]:
    """Document each status as an ``ErrorBody`` answer."""

    def decorator(func: F) -> F:
        for status in statuses:
            func = document_response(ErrorBody, status)(func)
        return func

    return decorator


def needs_login(func: F) -> F:
    """Document that the route takes the auth cookie (the route itself is ``login_required``)."""
    return security_scheme([{COOKIE_AUTH: []}])(func)
