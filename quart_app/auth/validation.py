"""The input rules every route keeps, for forms and JSON alike."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from ..exceptions import ValidationError

__all__ = ["ValidationError", "validate_credentials", "validate_password_change", "validate_registration"]

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,32}", re.ASCII)
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
EMAIL_MAX = 120  # the seed's column


@dataclass(frozen=True)
class Registration:
    username: str
    email: str
    password: str


@dataclass(frozen=True)
class PasswordChange:
    current_password: str
    new_password: str


@dataclass(frozen=True)
class Credentials:
    identifier: str
    password: str
    remember: bool


def _text(data: Mapping[str, Any], name: str, errors: dict[str, str], *, strip: bool) -> str:
    value = data.get(name)
    if value is None or value == "":
        errors[name] = "This field is required."
        return ""
    if not isinstance(value, str):
        errors[name] = "Must be a string."
        return ""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        errors[name] = "Contains characters that are not valid text."
        return ""
    return value.strip() if strip else value


def _password_problem(password: str) -> str | None:
    if len(password) < PASSWORD_MIN:
        return f"Password must be at least {PASSWORD_MIN} characters."
    if len(password) > PASSWORD_MAX:
        return f"Password must be at most {PASSWORD_MAX} characters."
    return None


def validate_registration(data: Mapping[str, Any]) -> Registration:
    errors: dict[str, str] = {}
    username = _text(data, "username", errors, strip=True)
    email = _text(data, "email", errors, strip=True)
    password = _text(data, "password", errors, strip=False)

    if "username" not in errors and not USERNAME_RE.fullmatch(username):
        errors["username"] = "Username must be 3 to 32 characters: letters, digits, '_', '.' or '-'."
    if "email" not in errors:
        try:
            email = validate_email(email, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            errors["email"] = f"Enter a valid email address ({exc})."
        else:
            if len(email) > EMAIL_MAX:
                errors["email"] = f"Email must be at most {EMAIL_MAX} characters."
    if "password" not in errors and (problem := _password_problem(password)):
        errors["password"] = problem
    if errors:
        raise ValidationError(errors)
    return Registration(username=username, email=email, password=password)


def validate_credentials(data: Mapping[str, Any]) -> Credentials:
    """Shape checks only: whether they match a user is the login's business (401, not 400)."""
    errors: dict[str, str] = {}
    identifier = _text(data, "username", errors, strip=True)
    password = _text(data, "password", errors, strip=False)
    if errors:
        raise ValidationError(errors)
    remember = data.get("remember", False)
    if isinstance(remember, str):
        remember = remember.lower() in {"1", "true", "on", "yes", "y"}
    elif not isinstance(remember, bool):
        raise ValidationError({"remember": "Must be true or false."})
    return Credentials(identifier=identifier, password=password, remember=remember)


def validate_password_change(data: Mapping[str, Any]) -> PasswordChange:
    errors: dict[str, str] = {}
    current = _text(data, "current_password", errors, strip=False)
    new = _text(data, "new_password", errors, strip=False)
    if "new_password" not in errors and (problem := _password_problem(new)):
        errors["new_password"] = problem
    if errors:
        raise ValidationError(errors)
    return PasswordChange(current_password=current, new_password=new)
