"""How a message leaves: the MIME message built from a queued row's content, and the SMTP or console transport.

Headers are set through ``email.message.EmailMessage`` (the ``default``
policy), which refuses CR or LF in a header value; the subject is made one
line of text before that (``one_line``), and an address with CR, LF or
anything but one addr-spec is refused when the message is queued
(``check_address``). A user's data can therefore never add a header or a
recipient.

SMTP errors are reduced to ``DeliveryFailed(summary, permanent)``: the
summary (for ``mail_outbox.last_error``, at most 200 characters) is the
exception's class and the server's code and short text, never the URL or
its password. A refusal of the recipient with a 5xx code is permanent (the
message is failed at once: retrying cannot change a "no such user"); every
other error (connection refused or lost, timeouts, 4xx, an authentication or
sender refusal, which an operator can fix) is retried with back-off.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

import aiosmtplib
import idna

from ..core.config import MailURL

__all__ = [
    "ConsoleTransport",
    "DeliveryFailed",
    "SMTPTransport",
    "build_message",
    "check_address",
    "envelope_address",
    "new_headers",
    "one_line",
]

log = logging.getLogger("quart_app.mail")

ERROR_MAX = 200
# RFC 5321's longest path (mail_outbox.recipient holds 255).
ADDRESS_MAX = 254
# The longest wait for QUIT once the message was accepted (it is sent by then, whatever QUIT does).
QUIT_TIMEOUT = 5.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_SPACES = re.compile(r"\s+")


class DeliveryFailed(Exception):
    """One delivery failed: ``summary`` is safe to store and show; ``permanent`` means retrying cannot help."""

    def __init__(self, summary: str, *, permanent: bool = False) -> None:
        super().__init__(summary)
        self.summary = summary[:ERROR_MAX]
        self.permanent = permanent


def one_line(text: str) -> str:
    """``text`` as one line: control characters and line breaks become spaces, runs of spaces one."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except UnicodeError:  # no IDNA name: left as it is (SMTPUTF8 carries it)
        return domain


def envelope_address(address: str) -> str:
    """``address`` as it travels: its domain in IDNA (A-label) form, the local part as it is."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{_ascii_domain(domain)}"


def check_address(address: str) -> str:
    """``address`` if it is one plain addr-spec (``user@domain``, no name, no CR/LF), else a ValueError."""
    if not isinstance(address, str) or _CONTROL.search(address) or address != address.strip():
        raise ValueError("a recipient must be one address without control characters")
    if len(address) > ADDRESS_MAX:
        raise ValueError(f"a recipient must be at most {ADDRESS_MAX} characters")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(ch in address for ch in '<>,;"() '):
        raise ValueError("a recipient must be one plain address (user@domain)")
    try:
        Address(username=local, domain=_ascii_domain(domain))
    except (ValueError, IndexError) as error:
        raise ValueError(f"a recipient must be one plain address: {error}") from None
    return address


def new_headers(mail_from: str) -> dict[str, str]:
    """The Message-ID (with the sender's domain) and Date of a message composed now."""
    domain = _ascii_domain(parseaddr(mail_from)[1].rpartition("@")[2]) or "localhost"
    return {"message_id": make_msgid(domain=domain), "date": format_datetime(datetime.now(UTC))}


def build_message(content: Mapping[str, str], *, mail_from: str, recipient: str) -> EmailMessage:
    """The MIME message: From, To, Subject, Date, Message-ID; text/plain and text/html alternatives, UTF-8."""
    message = EmailMessage()
    message["From"] = mail_from
    local, _, domain = recipient.rpartition("@")
    message["To"] = Address(username=local, domain=_ascii_domain(domain))
    message["Subject"] = one_line(content["subject"])
    message["Date"] = content["date"]
    message["Message-ID"] = content["message_id"]
    message["MIME-Version"] = "1.0"
    message.set_content(content["text"], charset="utf-8")
    message.add_alternative(content["html"], subtype="html", charset="utf-8")
    return message


def _summary(error: BaseException, secrets: tuple[str, ...]) -> str:
    name = type(error).__name__
    if isinstance(error, aiosmtplib.SMTPRecipientsRefused):
        parts = [f"{refused.code} {refused.message}" for refused in error.recipients]
        text = f"{name}: {'; '.join(parts)}"
    elif isinstance(error, aiosmtplib.SMTPResponseException):
        text = f"{name}: {error.code} {error.message}"
    elif isinstance(error, aiosmtplib.SMTPException):
        text = f"{name}: {error.message}"
    elif isinstance(error, OSError) and error.strerror:
        text = f"{name}: {error.strerror}"
    else:
        text = name
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return one_line(text)[:ERROR_MAX]


class SMTPTransport:
    """One connection per message to the relay of QUART_APP_MAIL_URL, all of it bounded by ``timeout``."""

    def __init__(self, mail: MailURL, timeout: float) -> None:
        self.mail = mail
        self.timeout = timeout

    def _client(self) -> aiosmtplib.SMTP:
        mail = self.mail
        return aiosmtplib.SMTP(
            hostname=mail.host,
            port=mail.port,
            # Login only when the URL names a user (aiosmtplib logs in after EHLO, and after STARTTLS).
            username=mail.username or None,
            password=(mail.password or None) if mail.username else None,
            use_tls=mail.mode == "smtps",
            # smtp:// is plain SMTP as asked (no opportunistic upgrade that a
            # certificate mismatch would turn into a failure); smtp+starttls:// requires it.
            start_tls=mail.mode == "smtp+starttls",
            timeout=self.timeout,
        )

    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> None:
        """Deliver ``message`` to ``recipient``, or raise DeliveryFailed."""
        client = self._client()
        try:
            async with asyncio.timeout(self.timeout):
                await client.connect()
                await client.send_message(message, sender=sender, recipients=[recipient])
        except TimeoutError as error:
            client.close()
            raise DeliveryFailed(
                f"{type(error).__name__}: no answer within {self.timeout:g} s"
                if type(error) is TimeoutError
                else _summary(error, (self.mail.password,))
            ) from None
        except Exception as error:
            client.close()
            permanent = isinstance(error, aiosmtplib.SMTPRecipientsRefused) and all(
                refused.code >= 500 for refused in error.recipients
            )
            raise DeliveryFailed(_summary(error, (self.mail.password,)), permanent=permanent) from None
        except BaseException:  # cancelled (the sender stops): the connection is dropped, the message not sent
            client.close()
            raise
        # Accepted: it is sent, whatever QUIT does.
        try:
            async with asyncio.timeout(QUIT_TIMEOUT):
                await client.quit()
        except Exception:
            client.close()
        except BaseException:
            client.close()
            raise


class ConsoleTransport:
    """Development and testing: the message is written to the log (logger ``quart_app.mail``, INFO)."""

    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> None:
        text = message.get_body(preferencelist=("plain",))
        log.info(
            "Mail (QUART_APP_MAIL_URL=console, not sent)\nFrom: %s\nTo: %s\nSubject: %s\nDate: %s\nMessage-ID: %s\n\n"
            "%s",
            message["From"],
            message["To"],
            message["Subject"],
            message["Date"],
            message["Message-ID"],
            text.get_content() if text is not None else "",
        )
