"""The transactional outbox: a message is a ``mail_outbox`` row written with the change that causes it; a sender
task per app and worker process delivers it after the response, with retries and back-off.

Queueing (``Mailer.queue``) renders the templates, encrypts the parts
(crypto.py) and adds the row to the caller's session: it is committed, or
rolled back, with the token or change it goes with. Nothing touches the
network then. When that session commits, this worker's sender is woken at
once (the session's ``after_commit`` event); it also polls every
MAIL_POLL_INTERVAL seconds, for rows queued by other workers and instances
and for retries that came due.

Claiming is atomic, so that two senders (two workers, two instances) never
send one message twice: one UPDATE that sets ``claimed_by`` and a lease
(``claimed_until``) on up to BATCH due rows whose lease is free, and counts
the attempt, ``WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED)`` with
RETURNING. PostgreSQL locks the rows the subquery picks and skips rows
another sender has locked (and re-checks a row another sender claimed
meanwhile against the WHERE, which it then no longer meets); SQLite runs a
write statement under the database's one write lock (taken before it reads),
so the subquery sees every earlier claim. The lease outlasts a delivery
(MAIL_SEND_TIMEOUT, twice, plus margins): a sender that dies (or is stopped)
mid-delivery leaves a claim that lapses, and another sender retries the
message. Marking the outcome is conditional on ``claimed_by`` still being
this sender, so a sender whose lease lapsed never overwrites another's
outcome. Delivery is therefore at least once: a message is sent twice only if
a sender dies after the relay accepted it and before the outcome was written.

Outcomes: sent (``sent_at``; the content erased); a failure is retried at now
+ min(MAIL_RETRY_DELAY * 2**(attempts-1), MAIL_RETRY_DELAY_MAX), up to a
quarter sooner (jitter, so that senders and messages spread out); after
MAIL_MAX_ATTEMPTS tries, or at once for a permanent failure (a 5xx refusal
of the recipient, content that cannot be decrypted), the row is "failed":
its content is kept (``mail retry`` sends it again), an ``auth_events`` row
"mail_failed" is written in the same transaction and a WARNING logged (the
id, kind, user id and error class; never the address or the content).

Every claim and mark is a short transaction of its own, run in one trip by
``Database.run_own_unit`` (on SQLite, on its threads: the file's write lock
is never held across turns of the event loop, so a loop busy elsewhere cannot
keep other writers waiting), never a request's session; the network is never
touched inside one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from email.utils import parseaddr
from typing import Any

import click
from quart import Quart, current_app
from sqlalchemy import event, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from quart_login import utcnow

from ..auth.events import SIGNALS
from ..core.config import Settings
from ..db import Database
from ..models import AuthEvent, OutboxMessage
from .crypto import CannotDecrypt, ContentCipher
from .transport import (
    QUIT_TIMEOUT,
    ConsoleTransport,
    DeliveryFailed,
    SMTPTransport,
    build_message,
    check_address,
    envelope_address,
    new_headers,
    one_line,
)

__all__ = ["APP_NAME", "BATCH", "EXTENSION", "STOP_GRACE", "Mailer", "Outcome", "get_mailer"]

log = logging.getLogger("quart_app.mail")

EXTENSION = "quart_app.mail"
APP_NAME = "Quart App"
# Rows one sender claims at a time (and delivers concurrently, one connection each).
BATCH = 8
# The longest a stop waits for the deliveries in flight before it abandons them (their claims lapse), and
# then for the cancelled task: a stop takes at most twice this, well inside serving.py's STOP_MARGIN.
STOP_GRACE = 0.5
# Tries of a mark that failed (the database out of reach) before the claim is left to lapse.
MARK_TRIES = 3
# A database error in the sender is logged at most this often (seconds).
ERROR_LOG_INTERVAL = 60.0
_TEMPLATE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TABLE = OutboxMessage.__table__
_C = _TABLE.c
# Keys of a queueing session's info.
_QUEUED = "quart_app.mail.queued"
_LISTENING = "quart_app.mail.listening"


@dataclass(frozen=True)
class Claimed:
    id: int
    kind: str
    recipient: str
    user_id: int | None
    content: bytes | None
    attempts: int


# What one delivery came to: sent, retry (due again later), failed (gave up), lost (another sender has it now).
Outcome = str


def lease_for(settings: Settings) -> timedelta:
    """How long a claim holds: longer than a delivery (MAIL_SEND_TIMEOUT and the QUIT after it) and its marks."""
    return timedelta(seconds=2 * settings.MAIL_SEND_TIMEOUT + QUIT_TIMEOUT + 10)


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds until the next try after ``attempts`` tries: doubling from MAIL_RETRY_DELAY, capped, with jitter."""
    base = min(settings.MAIL_RETRY_DELAY * 2 ** min(attempts - 1, 40), settings.MAIL_RETRY_DELAY_MAX)
    return base * random.uniform(0.75, 1.0)


def _started_by_a_command() -> bool:
    """Whether the app is being started by a ``quart ...`` command other than ``quart run`` (no sender then)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.command.name != "run"


def _after_commit(session: Session) -> None:
    mailer = session.info.pop(_QUEUED, None)
    if mailer is not None:
        mailer.wake()


def _after_rollback(session: Session) -> None:
    session.info.pop(_QUEUED, None)


class Mailer:
    """The mail extension of one app: queueing, and this worker's sender (started in before_serving)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.mail = settings.mail
        self.cipher = ContentCipher(settings.SECRET_KEY, settings.secret_key_fallbacks)
        self.transport = (
            ConsoleTransport() if self.mail.mode == "console" else SMTPTransport(self.mail, settings.MAIL_SEND_TIMEOUT)
        )
        self.envelope_from = envelope_address(parseaddr(settings.MAIL_FROM)[1])
        self.lease = lease_for(settings)
        self.app: Quart | None = None
        # Whether before_serving starts the sender: None = yes, unless a `quart` command (other than
        # `quart run`) starts the app; its mail is left to the servers' senders (or `mail send`).
        self.autostart: bool | None = None
        self.sender_id = ""
        self._task: asyncio.Task | None = None
        self._wake_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._error_logged_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.mail.sends

    def init_app(self, app: Quart) -> None:
        self.app = app
        app.extensions[EXTENSION] = self
        if not self.enabled:
            return
        app.before_serving(self.start)
        # First of the after_serving functions: the sender stops before the database is disposed.
        app.after_serving_funcs.insert(0, self.stop)

    # -- queueing -----------------------------------------------------------

    async def compose(self, template: str, context: Mapping[str, Any]) -> dict[str, str]:
        """The message's parts from templates/mail/<template>.txt and .html (the .txt sets ``subject``).

        The subject is a variable of the text template (``{% set subject %}...{% endset %}``),
        never a line of its output: text in the context can break lines of the body, not
        reach a header.
        """
        if not _TEMPLATE_RE.fullmatch(template):
            raise ValueError(f"not a mail template name: {template!r}")
        values = {**context, "public_url": self.settings.PUBLIC_URL, "app_name": APP_NAME}
        env = current_app.jinja_env
        text = await env.get_template(f"mail/{template}.txt").make_module_async(values)
        subject = one_line(str(getattr(text, "subject", "")))
        if not subject:
            raise ValueError(f"templates/mail/{template}.txt sets no subject ({{% set subject %}}...{{% endset %}})")
        html = await env.get_template(f"mail/{template}.html").render_async(values)
        return {
            "subject": subject,
            "text": str(text).strip("\n").rstrip() + "\n",
            "html": html.strip() + "\n",
            **new_headers(self.settings.MAIL_FROM),
        }

    async def queue(
        self,
        db: AsyncSession | Session,
        *,
        to: str,
        template: str,
        context: Mapping[str, Any],
        user_id: int | None = None,
    ) -> OutboxMessage | None:
        """Add the message to ``db``'s transaction (the caller commits); None when mail is off."""
        if not self.enabled:
            return None
        check_address(to)
        content = await self.compose(template, context)
        now = utcnow()
        row = OutboxMessage(
            created_at=now,
            kind=template,
            recipient=to,
            user_id=user_id,
            content=self.cipher.encrypt(content),
            status="pending",
            attempts=0,
            next_attempt_at=now,
        )
        db.add(row)
        session = db.sync_session if isinstance(db, AsyncSession) else db
        session.info[_QUEUED] = self
        if not session.info.get(_LISTENING):
            session.info[_LISTENING] = True
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_rollback", _after_rollback)
        return row

    # -- the sender ---------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Have this worker's sender look for due messages now (from any thread; a no-op when it is not running)."""
        loop, wake_event = self._loop, self._wake_event
        if loop is None or wake_event is None:
            return
        with suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(wake_event.set)

    async def start(self) -> None:
        if not self.enabled or self.running:
            return
        if self.autostart is False or (self.autostart is None and _started_by_a_command()):
            return
        self.sender_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        self._loop = asyncio.get_running_loop()
        self._wake_event = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="quart_app.mail sender")

    async def stop(self) -> None:
        """Stop the sender: deliveries in flight get STOP_GRACE seconds, then are abandoned (their claims lapse)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._wake_event is not None:
            self._wake_event.set()
        done, _ = await asyncio.wait({task}, timeout=STOP_GRACE)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE)
            if not done:
                log.warning("mail sender did not stop within %s s; abandoned", 2 * STOP_GRACE)
        if done and not task.cancelled() and task.exception() is not None:
            log.error("mail sender had stopped on an error", exc_info=task.exception())
        self._loop = None
        self._wake_event = None

    async def _run(self) -> None:
        # The first look comes after one poll interval, or at the first wake: never at
        # the very start, when the app's first requests open the database (on a SQLite
        # file not yet in WAL mode, the first connection's switch to it must not
        # contend with the sender's).
        while not self._stopping:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), self.settings.MAIL_POLL_INTERVAL)
            while not self._stopping:
                self._wake_event.clear()  # a wake during the pass makes another pass at once
                try:
                    claimed = len(await self.deliver_due())
                except asyncio.CancelledError:
                    raise
                except Exception as error:
                    self._log_error(error)
                    claimed = 0
                if claimed < BATCH:
                    break  # else more may be due

    def _log_error(self, error: Exception) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._error_logged_at < ERROR_LOG_INTERVAL and self._error_logged_at:
            return
        self._error_logged_at = now
        if isinstance(error, DBAPIError | OSError | TimeoutError) or type(error).__module__.startswith("quart_app"):
            # The database out of reach or failing (its error's text holds the statement's
            # parameters, the recipient among them: only the classes and SQLite's code name).
            orig = getattr(error, "orig", None)
            detail = getattr(orig, "sqlite_errorname", None) or (type(orig).__name__ if orig is not None else None)
            kind = type(error).__name__ + (f" ({detail})" if detail else "")
            log.warning("mail sender: the database failed (%s); trying again at the next poll", kind)
        else:
            log.exception("mail sender: unexpected error; trying again")

    async def deliver_due(self, limit: int = BATCH) -> list[Outcome]:
        """Claim up to ``limit`` due messages and deliver them (concurrently); their outcomes."""
        if not self.sender_id:
            self.sender_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"
        rows = await self._claim(limit)
        outcomes: list[Outcome] = []
        for result in await asyncio.gather(*(self._deliver(row) for row in rows), return_exceptions=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                # The outcome could not be written: the claim lapses and the message is tried again.
                self._log_error(result)
                result = "lost"
            outcomes.append(result)
        return outcomes

    async def _claim(self, limit: int) -> list[Claimed]:
        now = utcnow()
        free = or_(_C.claimed_until.is_(None), _C.claimed_until < now)
        due = select(_C.id).where(_C.status == "pending", _C.next_attempt_at <= now, free).order_by(_C.id)
        claim = (
            update(_TABLE)
            .where(
                _C.id.in_(due.limit(limit).with_for_update(skip_locked=True).scalar_subquery()),
                _C.status == "pending",
                free,
            )
            .values(claimed_by=self.sender_id, claimed_until=now + self.lease, attempts=_C.attempts + 1)
            .returning(_C.id, _C.kind, _C.recipient, _C.user_id, _C.content, _C.attempts)
        )

        def work(db: Session) -> list[Any]:
            # A read first: an idle poll writes nothing (on SQLite, writers of every worker queue for one lock).
            if db.execute(due.limit(1)).first() is None:
                db.rollback()
                return []
            db.rollback()
            found = db.execute(claim).all()
            db.commit()
            return found

        # One trip (on SQLite, to its threads): the write lock is never held across turns of the event loop.
        found = await self.database.run_own_unit(work)
        return sorted((Claimed(*row) for row in found), key=lambda row: row.id)

    async def _deliver(self, row: Claimed) -> Outcome:
        try:
            if row.content is None:
                raise CannotDecrypt("no content")
            content = self.cipher.decrypt(row.content)
        except CannotDecrypt as error:
            return await self._mark_failed(row, str(error), final=True)
        try:
            message = build_message(content, mail_from=self.settings.MAIL_FROM, recipient=row.recipient)
            await self.transport.send(message, sender=self.envelope_from, recipient=envelope_address(row.recipient))
        except DeliveryFailed as failure:
            final = failure.permanent or row.attempts >= self.settings.MAIL_MAX_ATTEMPTS
            return await self._mark_failed(row, failure.summary, final=final)
        except Exception as error:  # a message that cannot be built or sent by this code: counted like a failure
            log.exception("mail message %s (%s) could not be sent", row.id, row.kind)
            final = row.attempts >= self.settings.MAIL_MAX_ATTEMPTS
            return await self._mark_failed(row, type(error).__name__, final=final)
        return await self._mark(
            row,
            "sent",
            {"status": "sent", "sent_at": utcnow(), "content": None, "claimed_until": None, "last_error": None},
        )

    async def _mark_failed(self, row: Claimed, summary: str, *, final: bool) -> Outcome:
        summary = one_line(summary)[:200]
        if not final:
            due = utcnow() + timedelta(seconds=retry_delay(self.settings, row.attempts))
            return await self._mark(
                row, "retry", {"next_attempt_at": due, "claimed_until": None, "last_error": summary}
            )
        detail = f"{row.kind} after {row.attempts} {'try' if row.attempts == 1 else 'tries'}"
        outcome = await self._mark(
            row,
            "failed",
            {"status": "failed", "claimed_until": None, "last_error": summary},
            audit={"created_at": utcnow(), "event": "mail_failed", "user_id": row.user_id, "detail": detail},
        )
        if outcome == "failed":
            signal = SIGNALS.get("mail_failed")
            if signal is not None and signal.receivers and self.app is not None:
                try:
                    signal.send(self.app, user=None, user_id=row.user_id, detail=detail, ip=None)
                except Exception:
                    log.exception("a receiver of mail_failed failed")
            log.warning(
                "mail message %s (%s, user %s) failed after %d %s: %s; `mail status` shows it, `mail retry %s` "
                "sends it again",
                row.id,
                row.kind,
                row.user_id,
                row.attempts,
                "try" if row.attempts == 1 else "tries",
                summary.partition(":")[0],
                row.id,
            )
        return outcome

    async def _mark(
        self, row: Claimed, outcome: Outcome, values: dict[str, Any], *, audit: dict[str, Any] | None = None
    ) -> Outcome:
        """Write the outcome if this sender still holds the claim (else "lost"); tried MARK_TRIES times."""
        statement = (
            update(_TABLE)
            .where(_C.id == row.id, _C.claimed_by == self.sender_id, _C.status == "pending")
            .values(**values)
        )

        def work(db: Session) -> int:
            changed = db.execute(statement).rowcount
            if changed and audit is not None:
                db.execute(insert(AuthEvent.__table__), audit)
            db.commit()
            return changed

        for attempt in range(MARK_TRIES):
            try:
                # One trip, as for the claim: no lock held while the event loop runs other work.
                changed = await self.database.run_own_unit(work)
                return outcome if changed else "lost"
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if attempt == MARK_TRIES - 1 or self._stopping:
                    raise
                self._log_error(error)
                await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- the command line's work ---------------------------------------------

    async def status(self, *, long_pending: timedelta = timedelta(minutes=10), limit: int = 100) -> dict[str, Any]:
        """Counts per status, and the failed and long-pending (or already retried) messages, oldest first."""
        now = utcnow()
        async with self.database.get_sessionmaker()() as db:
            counts = dict((await db.execute(select(_C.status, func.count()).group_by(_C.status))).all())
            troubled = or_(
                _C.status == "failed",
                (_C.status == "pending") & or_(_C.attempts > 0, _C.created_at < now - long_pending),
            )
            columns = (_C.id, _C.status, _C.kind, _C.recipient, _C.attempts, _C.last_error, _C.created_at)
            rows = (await db.execute(select(*columns).where(troubled).order_by(_C.id).limit(limit))).all()
            total = (await db.execute(select(func.count()).where(troubled))).scalar_one()
        return {"counts": counts, "rows": rows, "more": total - len(rows)}

    async def retry(self, ids: Sequence[int] | None) -> tuple[list[int], list[int], list[int]]:
        """Failed messages (``ids``, or every failed one when None) back to pending, due now, attempts reset.

        Returns (retried, not failed, unknown); nothing changes when an id is unknown.
        """
        async with self.database.get_sessionmaker()() as db, db.begin():
            if ids is None:
                chosen = (await db.execute(select(_C.id).where(_C.status == "failed"))).scalars().all()
                found = {id_: "failed" for id_ in chosen}
            else:
                found = dict((await db.execute(select(_C.id, _C.status).where(_C.id.in_(ids)))).all())
            unknown = [id_ for id_ in ids or () if id_ not in found]
            if unknown:
                return [], [], unknown
            failed = sorted(id_ for id_, status in found.items() if status == "failed")
            if failed:
                await db.execute(
                    update(_TABLE)
                    .where(_C.id.in_(failed), _C.status == "failed")
                    .values(status="pending", attempts=0, next_attempt_at=utcnow(), claimed_by=None, claimed_until=None)
                )
        others = sorted(id_ for id_, status in found.items() if status != "failed")
        return failed, others, []


def get_mailer(app: Quart | None = None) -> Mailer:
    """The app's Mailer (``current_app``'s by default)."""
    app = app or current_app
    try:
        return app.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError("quart_app.mail.init_app(app, settings, database) was not called") from None
