"""The input rules every route keeps, for forms and JSON alike."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import idna
from email_validator import EmailNotValidError, validate_email

from ..exceptions import ValidationError

__all__ = [
    "ValidationError",
    "email_key",
    "login_key",
    "validate_credentials",
    "validate_password_change",
    "validate_registration",
]

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,32}", re.ASCII)
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
EMAIL_MAX = 120  # the seed's column
EMAIL_KEY_MAX = 255  # users.email_key


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


def _fold(text: str) -> str:
    """Unicode's compatibility caseless form (The Unicode Standard, D146), composed (NFKC) to be stored."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFD", text).casefold()).casefold()
    return unicodedata.normalize("NFKC", folded)


# Longer text is no domain name (at most 253 octets): it is folded without
# the IDNA mapping, which is pure Python (a login's identifier can be long).
DOMAIN_TYPED_MAX = 1024


def _domain_key(domain: str) -> str:
    domain = domain.strip().removesuffix(".")
    if len(domain) > DOMAIN_TYPED_MAX:
        return _fold(domain)
    try:
        # UTS-46 mapping (case, width, compatibility forms, the ideographic
        # full stop), then IDNA2008: the one ASCII spelling of the domain,
        # reached from its Unicode form and from its xn-- form alike.
        return idna.encode(domain, uts46=True).decode("ascii").lower().removesuffix(".")
    except UnicodeError:  # idna.IDNAError and its kinds: no domain name (only a login can type one)
        return _fold(domain)


def email_key(address: str) -> str:
    """The one form of an address that uniqueness, login and the throttle compare (users.email_key).

    Two spellings of one address share it: letter case (non-ASCII too, with
    full case folding: "Straße" is "strasse"), Unicode normalization forms
    (NFC, NFD) and compatibility forms (fullwidth letters, a fullwidth "@"),
    and a domain typed in Unicode or as its xn-- form. The local part is
    NFKC and case folded; the domain (after the last "@") IDNA-encoded with
    UTS-46 mapping and non-transitional processing ("straße.de" and
    "strasse.de" remain two domains, as in DNS). Text that is no address
    (a login may type anything) is folded whole, without error.
    """
    local, at, domain = unicodedata.normalize("NFKC", address).rpartition("@")
    if not at:
        return _fold(domain)
    return f"{_fold(local)}@{_domain_key(domain)}"


def login_key(identifier: str) -> str:
    """What the login throttle counts an identifier that matches no account under: emails by their key."""
    key = email_key(identifier)
    return key if "@" in key else identifier.lower()


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
    if strip and "\x00" in value:
        # Names and addresses are stored or looked up as text: PostgreSQL's holds no NUL.
        # (Passwords are only hashed, so any character stays allowed there.)
        errors[name] = "Contains characters that are not valid text."
        return ""
    return value.strip() if strip else value


def _password_problem(password: str) -> str | None:
    if len(password) < PASSWORD_MIN:
        return f"Password must be at least {PASSWORD_MIN} characters."
    if len(password) > PASSWORD_MAX:
        return f"Password must be at most {PASSWORD_MAX} characters."
    return None


def text_field(data: Mapping[str, Any], name: str, errors: dict[str, str], *, strip: bool) -> str:
    """The text field ``name`` of ``data``; what is wrong with it goes into ``errors`` (the value is then "")."""
    return _text(data, name, errors, strip=strip)


def password_problem(password: str) -> str | None:
    """Why ``password`` breaks the length rule (8 to 1024 characters), or None."""
    return _password_problem(password)


def valid_email(email: str, name: str, errors: dict[str, str]) -> str:
    """The normalized address, or the reason it is refused in ``errors[name]`` (the rule of registration)."""
    try:
        email = validate_email(email, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        errors[name] = f"Enter a valid email address ({exc})."
        return email
    if len(email) > EMAIL_MAX:
        errors[name] = f"Email must be at most {EMAIL_MAX} characters."
    elif len(email_key(email)) > EMAIL_KEY_MAX:  # (letters that expand under NFKC, as U+FDFA)
        errors[name] = "Email is too long once normalized."
    return email


def validate_registration(data: Mapping[str, Any]) -> Registration:
    errors: dict[str, str] = {}
    username = _text(data, "username", errors, strip=True)
    email = _text(data, "email", errors, strip=True)
    password = _text(data, "password", errors, strip=False)

    if "username" not in errors and not USERNAME_RE.fullmatch(username):
        errors["username"] = "Username must be 3 to 32 characters: letters, digits, '_', '.' or '-'."
    if "email" not in errors:
        email = valid_email(email, "email", errors)
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
