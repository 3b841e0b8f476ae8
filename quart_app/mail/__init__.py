"""Mail: messages queued in the database with the change that causes them, delivered after the response.

QUART_APP_MAIL_URL says how mail leaves: ``smtp://user:pass@host:port``
(``smtp+starttls://``, ``smtps://`` for TLS), ``console`` (the message is
written to the log, logger ``quart_app.mail``: the development and testing
default) or ``off`` (``mail_enabled()`` is False, the email features answer
404, nothing is queued). Every link in a message is built on
QUART_APP_PUBLIC_URL (every template gets it as ``public_url``), never on
the request's Host header.

Use::

    from quart_app.mail import mail_enabled, queue_mail

    await queue_mail(db, to=user.email, template="reset_password", user_id=user.id,
                     context={"username": user.username, "link": link, "expires_in": "30 minutes"})
    await db.commit()  # the message is committed (or rolled back) with the token

The message is a row of ``mail_outbox`` (outbox.py: the sender, its claims
and retries; transport.py: SMTP and console; crypto.py: the content
encrypted at rest). An SMTP server that is down or slow delays mail, loses
none, and never slows, fails or changes a response. ``quart ... mail status``,
``mail retry`` and ``mail send`` are in cli.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Quart
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ..core.config import Settings, get_settings
from ..db import Database
from .outbox import APP_NAME, EXTENSION, Mailer, get_mailer

__all__ = [
    "APP_NAME",
    "EXTENSION",
    "Mailer",
    "get_mailer",
    "init_app",
    "mail_enabled",
    "queue_mail",
]


def init_app(app: Quart, settings: Settings, database: Database) -> Mailer:
    """Set mail up on ``app`` (after ``database.init_app``): queueing, and a sender per worker while it serves."""
    mailer = Mailer(settings, database)
    mailer.init_app(app)
    return mailer


def mail_enabled() -> bool:
    """False when QUART_APP_MAIL_URL is off (the email routes answer 404 then)."""
    return get_settings().mail.sends


async def queue_mail(
    db: AsyncSession | Session,
    *,
    to: str,
    template: str,
    context: Mapping[str, Any],
    user_id: int | None = None,
) -> None:
    """Queue a message in ``db``'s transaction; the caller commits (or rolls back, and nothing is sent).

    Renders templates/mail/<template>.txt (which sets ``subject``) and
    .html with ``context`` plus ``public_url`` and ``app_name``, encrypts
    the parts and adds the row. Once ``db`` commits, this worker's sender is
    woken; the request never waits for delivery. A no-op when mail is off. A
    ``to`` that is not one plain address (CR/LF, a name, several) is a
    ValueError.
    """
    if mail_enabled():
        await get_mailer().queue(db, to=to, template=template, context=context, user_id=user_id)
