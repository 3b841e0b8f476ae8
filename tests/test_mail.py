"""Mail through the transactional outbox (quart_app/mail/), against a real SMTP server (tests/smtp_server.py).

Messages are queued through the public API (``queue_mail``) in a committed
transaction of the test's own, or by a test-only route; the app's sender (or
hypercorn's, over real servers) delivers them to aiosmtpd on 127.0.0.1. The
database is read directly (``db_rows``, off the event loop). Every wait is
bounded. Runs on SQLite and PostgreSQL alike (``bash scripts/test-postgresql``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import time
from collections import Counter
from email.utils import parseaddr

import click
import pytest
from conftest import MAIL_TEST_SETTINGS, ROOT, db_rows, db_write, mail_settings
from quart import request
from servers import serving_off_loop
from smtp_server import SMTPServer, self_signed_certificate

from quart_app.core.config import load_settings
from quart_app.db import get_database, get_db
from quart_app.mail import get_mailer, mail_enabled, queue_mail
from quart_app.mail.crypto import ContentCipher
from quart_app.mail.outbox import BATCH, STOP_GRACE, _started_by_a_command, lease_for, retry_delay

TOKEN = "tok-" + "Z" * 40
LINK = f"https://app.example.com/verify-email/{TOKEN}"
CONTEXT = {"username": "bob", "link": LINK, "expires_in": "24 hours"}
OUTBOX = "SELECT id, status, attempts, last_error, content, sent_at, claimed_by FROM mail_outbox ORDER BY id"


async def rows(database, sql: str = OUTBOX, *params) -> list[tuple]:
    """What the database holds, read in a thread (never blocking the loop the app's sender runs on)."""
    return await asyncio.to_thread(db_rows, database, sql, *params)


async def wait_until(check, timeout: float = 15.0, what: str = "the condition"):  # noqa: ASYNC109
    """Poll ``await check()`` until it is truthy (bounded); its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.05)


async def queue(app, count: int = 1, *, commit: bool = True, to: str = "bob@example.com", **options) -> None:
    """Queue ``count`` messages through the public API in one transaction of the test's own, and commit it."""
    options.setdefault("template", "verify_email")
    options.setdefault("context", CONTEXT)
    async with app.app_context():
        async with get_database().get_sessionmaker()() as db:
            for _ in range(count):
                await queue_mail(db, to=to, **options)
            if commit:
                await db.commit()
            else:
                await db.rollback()


async def invoke_cli(app, *args: str):
    """``quart mail ARGS`` through Quart's CLI runner, in a thread (the command runs its own event loop)."""
    return await asyncio.to_thread(app.test_cli_runner().invoke, args=["mail", *args])


def add_queue_route(app) -> None:
    """A test-only route that queues a message in the request's transaction and commits it."""

    @app.get("/_test/queue")
    async def _queue():
        db = get_db()
        await queue_mail(db, to=request.args["to"], template="verify_email", context=CONTEXT)
        await db.commit()
        return {"queued": True}


# -- one message ------------------------------------------------------------------------------------


async def test_a_queued_message_arrives_once_with_its_headers_and_both_parts(mail_app, smtp_server, database):
    await queue(mail_app, user_id=None)
    [received] = await smtp_server.wait_for(1)
    message = received.message
    assert parseaddr(message["From"])[1] == "no-reply@example.com"
    assert message["To"] == "bob@example.com"
    assert received.rcpt_tos == ["bob@example.com"]
    assert received.mail_from == "no-reply@example.com"
    assert message["Subject"] == "bob, confirm your email address for Quart App"
    assert message["Date"] and message["Date"].datetime is not None
    assert message["Message-ID"].endswith("@example.com>")
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())
    assert LINK in received.text and f'href="{LINK}"' in received.html
    assert received.links[0] == LINK
    assert "24 hours" in received.text
    # Sent: content erased, sent_at set, one attempt. Nothing more arrives on later polls.
    [(_, status, attempts, last_error, content, sent_at, _)] = await wait_until(
        lambda: _rows_with_status(database, "sent"), what="the row marked sent"
    )
    assert (status, attempts, last_error, content) == ("sent", 1, None, None) and sent_at
    await asyncio.sleep(5 * MAIL_TEST_SETTINGS["MAIL_POLL_INTERVAL"])
    assert len(smtp_server.received) == 1


async def _rows_with_status(database, status: str, count: int = 1):
    found = await rows(database)
    return found if len(found) >= count and all(row[1] == status for row in found) else None


async def test_nothing_is_sent_when_the_transaction_rolls_back(mail_app, smtp_server, database):
    await queue(mail_app, commit=False, to="rolled-back@example.com")
    await queue(mail_app, to="committed@example.com")
    await smtp_server.wait_for(1)
    await asyncio.sleep(5 * MAIL_TEST_SETTINGS["MAIL_POLL_INTERVAL"])
    assert [r.rcpt_tos for r in smtp_server.received] == [["committed@example.com"]]
    assert [row[1] for row in await rows(database)] == ["sent"]


async def test_every_kind_renders_with_a_subject_both_parts_and_no_password(mail_app, smtp_server):
    kinds = {
        "verify_email": {"username": "bob", "link": LINK, "expires_in": "24 hours"},
        "reset_password": {"username": "bob", "link": LINK, "expires_in": "30 minutes"},
        "email_change_confirm": {**CONTEXT, "new_email": "new@example.com", "expires_in": "1 hour"},
        "email_change_notice": {"username": "bob", "new_email": "new@example.com"},
        "email_changed": {"username": "bob", "new_email": "new@example.com"},
        "password_changed": {"username": "bob"},
        "password_reset": {"username": "bob"},
        "mfa_enabled": {"username": "bob"},
        "mfa_disabled": {"username": "bob", "by_support": False},
        "recovery_code_used": {"username": "bob", "remaining": 7},
        "recovery_codes_regenerated": {"username": "bob", "count": 10},
        "passkey_added": {"username": "bob", "name": "Laptop"},
        "passkey_removed": {"username": "bob", "name": "Laptop", "by_support": False},
    }
    kinds_on_disk = {path.name.split(".")[0] for path in (ROOT / "quart_app/templates/mail").glob("[!_]*.txt")}
    assert kinds_on_disk == set(kinds)
    for kind, context in kinds.items():
        await queue(mail_app, template=kind, context=context, to=f"{kind.replace('_', '-')}@example.com")
    received = {r.rcpt_tos[0].split("@")[0].replace("-", "_"): r for r in await smtp_server.wait_for(len(kinds))}
    assert set(received) == set(kinds)
    for kind, context in kinds.items():
        message = received[kind]
        subject = message.message["Subject"]
        assert subject and "\n" not in subject and "Quart App" in subject, kind
        assert "Hello bob," in message.text and "Hello bob," in message.html, kind
        assert message.text.rstrip().endswith("https://app.example.com"), kind
        assert '<html lang="en">' in message.html, kind
        if "link" in context:
            assert LINK in message.text and LINK in message.html, kind
            assert context["expires_in"] in message.text, kind
        else:  # a notice: what to do if it was not them
            assert "https://app.example.com/forgot-password" in message.text, kind
            assert "https://app.example.com/forgot-password" in message.html, kind
            assert "support" in message.text, kind
        if "new_email" in context:
            assert "new@example.com" in message.text, kind
        assert "password:" not in message.text.lower().replace("know your password:", ""), kind


# -- at rest ----------------------------------------------------------------------------------------


async def test_content_is_encrypted_at_rest_and_erased_once_sent(make_app, smtp_server, database):
    key = secrets.token_urlsafe(48)
    smtp_server.stop()  # so that the message waits in the outbox
    app = make_app(**mail_settings(smtp_server), SECRET_KEY=key)
    async with app.test_app():
        await queue(app, context={**CONTEXT, "username": "bob-the-recipient"})
        [row] = await rows(database, "SELECT * FROM mail_outbox")
        stored = b"".join(value if isinstance(value, bytes) else str(value).encode() for value in row)
        for secret in (TOKEN, "bob-the-recipient", "confirm your email"):
            assert secret.encode() not in stored
        [(content,)] = await rows(database, "SELECT content FROM mail_outbox")
        # It is the message, encrypted under a key derived from the secret key.
        assert TOKEN in ContentCipher(key).decrypt(content)["text"]
        smtp_server.start()
        await smtp_server.wait_for(1)
        await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
    assert await rows(database, "SELECT content FROM mail_outbox") == [(None,)]


async def test_a_rotated_key_keeps_pending_mail_readable_and_a_foreign_one_fails_it(make_app, smtp_server, database):
    old, new, other = (secrets.token_urlsafe(48) for _ in range(3))
    for key, to in ((old, "old-key@example.com"), (other, "other-key@example.com")):
        queued_by = make_app(**mail_settings(smtp_server), SECRET_KEY=key)
        get_mailer(queued_by).autostart = False  # queue only: no sender of its own
        async with queued_by.test_app():
            await queue(queued_by, to=to)
    app = make_app(**mail_settings(smtp_server), SECRET_KEY=new, SECRET_KEY_FALLBACKS=old)
    async with app.test_app():
        [received] = await smtp_server.wait_for(1)
        assert received.rcpt_tos == ["old-key@example.com"] and LINK in received.text
        found = await wait_until(lambda: _settled(database, 2), what="both rows settled")
    assert [(row[1], row[2], row[3]) for row in found] == [
        ("sent", 1, None),
        ("failed", 1, "cannot decrypt (secret key changed)"),
    ]
    assert len(smtp_server.received) == 1


async def _settled(database, count: int):
    found = await rows(database)
    return found if len(found) == count and all(row[1] != "pending" for row in found) else None


# -- outages ----------------------------------------------------------------------------------------


async def test_an_smtp_server_that_is_down_delays_mail_and_loses_none(mail_app, smtp_server, database):
    smtp_server.stop()
    await queue(mail_app)

    async def retried():
        [row] = await rows(database)
        return row if row[2] >= 2 else None

    _, status, attempts, last_error, content, _, _ = await wait_until(retried, what="two failed tries")
    assert status == "pending" and content is not None
    assert last_error.startswith("SMTPConnectError") and "Connect call failed" in last_error
    [(due, created)] = await rows(database, "SELECT next_attempt_at, created_at FROM mail_outbox")
    assert str(due) > str(created)  # due later: the back-off
    smtp_server.start()  # back, on the same port
    await smtp_server.wait_for(1)
    await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
    await asyncio.sleep(5 * MAIL_TEST_SETTINGS["MAIL_POLL_INTERVAL"])
    assert len(smtp_server.received) == 1
    assert LINK in smtp_server.received[0].text


def test_retry_delays_double_from_mail_retry_delay_up_to_the_cap_with_jitter():
    settings = load_settings({"ENV": "testing", "MAIL_RETRY_DELAY": 10, "MAIL_RETRY_DELAY_MAX": 3600})
    for attempts, base in ((1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (60, 3600)):
        for _ in range(50):
            assert 0.75 * base <= retry_delay(settings, attempts) <= base
    # The lease of a claim outlasts a delivery (MAIL_SEND_TIMEOUT) and its QUIT.
    assert lease_for(settings).total_seconds() > 2 * settings.MAIL_SEND_TIMEOUT


async def test_a_message_that_keeps_failing_is_failed_audited_shown_and_sent_by_mail_retry(
    make_app, smtp_server, database, caplog
):
    caplog.set_level(logging.WARNING, logger="quart_app.mail")
    settings = mail_settings(smtp_server, MAIL_MAX_ATTEMPTS=3)
    smtp_server.stop()
    app = make_app(**settings)
    cli_app = make_app(**settings)
    async with app.test_app():
        await queue(app, to="carol@example.com")
        [row] = await wait_until(lambda: _rows_with_status(database, "failed"), what="the message failed")
        message_id, _, attempts, last_error, content, _, _ = row
        assert attempts == 3 and last_error.startswith("SMTPConnectError") and content is not None
        assert await rows(database, "SELECT event, user_id, detail FROM auth_events WHERE event = 'mail_failed'") == [
            ("mail_failed", None, "verify_email after 3 tries")
        ]
        warnings = [r.getMessage() for r in caplog.records if r.name == "quart_app.mail" and r.levelname == "WARNING"]
        assert len(warnings) == 1 and f"mail message {message_id} (verify_email" in warnings[0]
        assert "carol" not in warnings[0] and TOKEN not in warnings[0]

        result = await invoke_cli(cli_app, "status")
        assert result.exit_code == 0, result.output
        assert "pending: 0  sent: 0  failed: 1" in result.output
        [line] = [line for line in result.output.splitlines() if line.strip().startswith(str(message_id))]
        for shown in ("failed", "verify_email", "3", "carol@example.com", "SMTPConnectError"):
            assert shown in line
        assert TOKEN not in result.output

        for args, message in (
            ((str(message_id + 100),), f"no message with id {message_id + 100}"),
            ((), "give message ids"),
            ((str(message_id), "--all-failed"), "give message ids"),
        ):
            result = await invoke_cli(cli_app, "retry", *args)
            assert result.exit_code == 1 and message in result.output, result.output
        assert (await rows(database))[0][1] == "failed"

        smtp_server.start()
        result = await invoke_cli(cli_app, "retry", str(message_id))
        assert result.exit_code == 0 and f"sent again: {message_id}" in result.output, result.output
        [received] = await smtp_server.wait_for(1)  # by the running app's sender
        assert received.rcpt_tos == ["carol@example.com"]
        [row] = await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
        assert row[2] == 1  # tries counted from zero again
        result = await invoke_cli(cli_app, "retry", str(message_id))
        assert result.exit_code == 0 and f"Message {message_id} is not failed" in result.output


async def test_mail_retry_all_failed_and_mail_send_deliver_without_a_running_sender(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server, MAIL_MAX_ATTEMPTS=1))
    get_mailer(app).autostart = False
    async with app.test_app():
        await queue(app, 3)
    smtp_server.stop()
    result = await invoke_cli(app, "send")
    assert result.exit_code == 1 and "Sent 0; 0 to be tried again later; 3 failed." in result.output, result.output
    smtp_server.start()
    result = await invoke_cli(app, "retry", "--all-failed")
    assert result.exit_code == 0 and "Queued 3 message(s)" in result.output, result.output
    result = await invoke_cli(app, "send")
    assert result.exit_code == 0 and "Sent 3;" in result.output, result.output
    assert len(smtp_server.received) == 3
    assert [row[1] for row in await rows(database)] == ["sent"] * 3


async def test_a_long_pending_message_is_listed_by_mail_status(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    get_mailer(app).autostart = False
    async with app.test_app():
        await queue(app, 2)
    db_write(database, "UPDATE mail_outbox SET created_at = ? WHERE id = 1", "2000-01-01 00:00:00.000000")
    result = await invoke_cli(app, "status")
    assert result.exit_code == 0, result.output
    assert "pending: 2  sent: 0  failed: 0" in result.output
    listed = [line.split()[0] for line in result.output.splitlines() if line.strip()[:1].isdigit()]
    assert listed == ["1"]


async def test_a_recipient_refused_for_good_fails_at_once(mail_app, smtp_server, database):
    smtp_server.refused.add("nobody@example.com")
    await queue(mail_app, to="nobody@example.com")
    [row] = await wait_until(lambda: _rows_with_status(database, "failed"), what="the message failed")
    assert row[2] == 1 and row[3].startswith("SMTPRecipientsRefused: 550")


async def test_a_send_past_mail_send_timeout_is_abandoned_and_retried_once(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server, MAIL_SEND_TIMEOUT=0.5))
    smtp_server.delay = 3.0
    async with app.test_app():
        await queue(app)

        async def timed_out():
            [row] = await rows(database)
            return row if row[3] else None

        row = await wait_until(timed_out, what="a timeout recorded")
        assert row[3] == "TimeoutError: no answer within 0.5 s" and row[1] == "pending"
        smtp_server.delay = 0
        await smtp_server.wait_for(1)
        await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
        await asyncio.sleep(5 * MAIL_TEST_SETTINGS["MAIL_POLL_INTERVAL"])
    assert len(smtp_server.received) == 1


async def test_a_slow_smtp_server_never_slows_the_request_that_queues_mail(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    add_queue_route(app)
    async with app.test_app():
        client = app.test_client()
        with smtp_server.holding():  # DATA is not answered until the block ends
            response = await asyncio.wait_for(client.get("/_test/queue?to=first@example.com"), 10)
            assert response.status_code == 200
            assert smtp_server.received == []
            await smtp_server.wait_stalled(1)  # the sender is in DATA, the server not answering
            response = await asyncio.wait_for(client.get("/_test/queue?to=second@example.com"), 10)
            assert response.status_code == 200
            # Both answered while the server was still stalling the first message.
            assert smtp_server.stalled >= 1 and smtp_server.received == []
        received = await smtp_server.wait_for(2)
    assert sorted(r.rcpt_tos[0] for r in received) == ["first@example.com", "second@example.com"]


async def test_a_commit_that_queued_mail_wakes_the_sender_of_its_worker_at_once(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server, MAIL_POLL_INTERVAL=120))  # no poll during the test
    add_queue_route(app)
    async with app.test_app():
        response = await app.test_client().get("/_test/queue?to=woken@example.com")
        assert response.status_code == 200
        [received] = await smtp_server.wait_for(1, timeout=10)
        assert received.rcpt_tos == ["woken@example.com"]
        await queue(app, commit=False)  # a rollback wakes nothing, and sends nothing
        await asyncio.sleep(0.5)
    assert len(smtp_server.received) == 1


async def test_a_stop_abandons_a_stalled_delivery_within_a_bound_and_its_claim_lapses(make_app, smtp_server, database):
    key = secrets.token_urlsafe(48)
    app = make_app(**mail_settings(smtp_server), SECRET_KEY=key)
    async with app.test_app():
        with smtp_server.holding():
            await queue(app)
            await smtp_server.wait_stalled(1)
            started = time.monotonic()
            await get_mailer(app).stop()  # what after_serving does first
            stop_took = time.monotonic() - started
    assert stop_took < 2 * STOP_GRACE + 1
    [(_, status, attempts, _, _, _, claimed_by)] = await rows(database)
    assert (status, attempts) == ("pending", 1) and claimed_by
    assert smtp_server.received == []
    # The claim lapses (here: made to, rather than waiting out the lease); another sender retries it.
    db_write(database, "UPDATE mail_outbox SET claimed_until = ?", "2000-01-01 00:00:00.000000")
    other = make_app(**mail_settings(smtp_server), SECRET_KEY=key)
    async with other.test_app():
        await smtp_server.wait_for(1)
        [row] = await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
    assert row[2] == 2


async def test_a_sender_whose_claim_lapsed_cannot_overwrite_the_outcome_of_the_next(make_app, smtp_server, database):
    app = make_app(**mail_settings(smtp_server))
    get_mailer(app).autostart = False
    async with app.test_app():
        await queue(app)
        first = get_mailer(app)
        first.sender_id = "first"
        second = copy.copy(first)
        second.sender_id = "second"
        async with app.app_context():
            [claimed] = await first._claim(BATCH)
            assert await second._claim(BATCH) == []  # held by the first
            db_write(database, "UPDATE mail_outbox SET claimed_until = ?", "2000-01-01 00:00:00.000000")
            [again] = await second._claim(BATCH)
            assert (claimed.attempts, again.attempts) == (1, 2)
            assert await first._mark_failed(claimed, "TimeoutError: late", final=False) == "lost"
            assert await first._mark(claimed, "sent", {"status": "sent"}) == "lost"
            assert await second._deliver(again) == "sent"
    assert [(row[1], row[3], row[6]) for row in await rows(database)] == [("sent", None, "second")]
    assert len(smtp_server.received) == 1


# -- what goes into the message ---------------------------------------------------------------------


async def test_cr_lf_in_the_context_adds_no_header_and_html_is_escaped(mail_app, smtp_server):
    username = "eve\r\nBcc: victim@example.com\r\nX-Injected: yes\n<script>alert(1)</script>"
    await queue(mail_app, context={**CONTEXT, "username": username})
    [received] = await smtp_server.wait_for(1)
    message = received.message
    assert received.rcpt_tos == ["bob@example.com"]
    assert message["Bcc"] is None and message["X-Injected"] is None
    headers = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
    assert sorted(message.keys()) == sorted(headers)
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert message["Subject"].startswith("eve Bcc: victim@example.com X-Injected: yes <script>")
    assert "Hello eve" in received.text
    assert b"\r\nBcc:" not in received.raw.split(b"\r\n\r\n", 1)[0]
    assert "<script>" not in received.html and "&lt;script&gt;" in received.html


async def test_a_recipient_that_is_not_one_plain_address_is_refused_when_queued(mail_app, database):
    for to in (
        "bob@example.com\r\nBcc: victim@example.com",
        "Bob <bob@example.com>",
        "a@example.com, b@example.com",
        "x" * 250 + "@example.com",
    ):
        with pytest.raises(ValueError):
            await queue(mail_app, to=to)
    assert await rows(database) == []


async def test_a_unicode_address_is_delivered_with_its_domain_in_idna(mail_app, smtp_server):
    await queue(mail_app, to="jörg@bücher.example")
    [received] = await smtp_server.wait_for(1)
    assert received.rcpt_tos == ["jörg@xn--bcher-kva.example"]
    assert received.message["To"].addresses[0].username == "jörg"


async def test_smtp_credentials_are_used_and_a_refusal_shows_no_password(make_app, database):
    with SMTPServer(credentials=("mailer", "s3cret p@ss")) as server:
        url = f"smtp://mailer:s3cret%20p%40ss@127.0.0.1:{server.port}"
        app = make_app(**{**mail_settings(server), "MAIL_URL": url})
        async with app.test_app():
            await queue(app)
            await server.wait_for(1)
        assert server.logins == [("mailer", "s3cret p@ss")]
        wrong = make_app(**{**mail_settings(server), "MAIL_URL": url.replace("s3cret", "wrong")})
        async with wrong.test_app():
            await queue(wrong)

            async def refused():
                found = await rows(database)
                return found[-1] if found[-1][3] else None

            row = await wait_until(refused, what="the refusal recorded")
        assert row[3].startswith("SMTPAuthenticationError: 535") and "wrong" not in row[3]
        assert len(server.received) == 1


@pytest.mark.parametrize("tls", ["smtps", "starttls"])
async def test_smtps_and_starttls_deliver_over_tls_with_the_certificate_checked(
    make_app, database, tmp_path, monkeypatch, tls
):
    certificate = self_signed_certificate(tmp_path)
    with SMTPServer(tls=tls, certificate=certificate) as server:
        app = make_app(**mail_settings(server))
        async with app.test_app():
            await queue(app)

            async def refused():
                [row] = await rows(database)
                return row if row[3] else None

            # Not trusted yet: refused (and to be retried), never sent in the clear.
            row = await wait_until(refused, what="the untrusted certificate refused")
            assert row[1] == "pending" and "certificate verify failed" in row[3], row[3]
            assert server.received == []
            monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # now trusted
            [received] = await server.wait_for(1)
        assert received.tls and LINK in received.text


# -- other modes ------------------------------------------------------------------------------------


async def test_console_mode_writes_the_message_to_the_log(make_app, database, caplog):
    caplog.set_level(logging.INFO, logger="quart_app.mail")
    app = make_app(**{**MAIL_TEST_SETTINGS, "MAIL_URL": "console"})
    async with app.test_app():
        await queue(app)
        await wait_until(lambda: _rows_with_status(database, "sent"), what="the row marked sent")
    [logged] = [r.getMessage() for r in caplog.records if r.name == "quart_app.mail" and r.levelname == "INFO"]
    assert "To: bob@example.com" in logged and "Subject: bob, confirm your email address" in logged
    assert LINK in logged


async def test_off_mode_queues_and_sends_nothing(make_app, database):
    app = make_app(MAIL_URL="off")
    async with app.test_app():
        assert not get_mailer(app).running
        async with app.app_context():
            assert mail_enabled() is False
        await queue(app)
    assert await rows(database) == []


async def test_testing_defaults_to_console_and_the_sender_runs_while_the_app_serves(make_app):
    app = make_app()
    assert get_mailer(app).mail.mode == "console"
    async with app.test_app():
        assert get_mailer(app).running
    assert not get_mailer(app).running


def test_a_quart_command_other_than_run_starts_no_sender():
    """`quart users create` and the like leave their mail to the servers' senders (or `mail send`)."""
    assert not _started_by_a_command()
    with click.Context(click.Command("create")):
        assert _started_by_a_command()
    with click.Context(click.Command("run")):
        assert not _started_by_a_command()


# -- many senders -----------------------------------------------------------------------------------


async def _assert_each_delivered_once(smtp_server, database, count: int) -> Counter:
    await smtp_server.wait_for(count, timeout=60)
    await wait_until(lambda: _rows_with_status(database, "sent", count), timeout=30, what="every row marked sent")
    await asyncio.sleep(1.0)  # several polls of every sender: nothing more arrives
    received = smtp_server.received
    ids = Counter(r.message["Message-ID"] for r in received)
    assert len(received) == count and len(ids) == count, ids.most_common(3)
    found = await rows(database)
    assert [row[2] for row in found] == [1] * count  # each claimed once
    return Counter(row[6] for row in found)


async def test_two_senders_in_one_process_deliver_each_message_once(make_app, smtp_server, database):
    key = secrets.token_urlsafe(48)
    one, two = (make_app(**mail_settings(smtp_server), SECRET_KEY=key) for _ in range(2))
    async with one.test_app(), two.test_app():
        for _ in range(4):
            await queue(one, 10)
        await _assert_each_delivered_once(smtp_server, database, 40)


async def _queue_for_servers(database, smtp_server, key: str, count: int, make_app) -> None:
    """Queue from the test process (same database and key as the servers), without a sender of its own."""
    app = make_app(**mail_settings(smtp_server), SECRET_KEY=key)
    get_mailer(app).autostart = False
    async with app.test_app():
        for _ in range(count // 10):
            await queue(app, 10)
            await asyncio.sleep(0.1)


def _server_settings(smtp_server) -> dict:
    return {name: str(value) for name, value in mail_settings(smtp_server).items()}


async def test_two_instances_deliver_each_message_exactly_once(make_app, smtp_server, database):
    key = secrets.token_urlsafe(48)
    settings = _server_settings(smtp_server)
    async with (
        serving_off_loop(database, settings, workers=1, secret_key=key),
        serving_off_loop(database, settings, workers=1, secret_key=key),
    ):
        await _queue_for_servers(database, smtp_server, key, 40, make_app)
        senders = await _assert_each_delivered_once(smtp_server, database, 40)
    print("deliveries per sender:", dict(senders))


async def test_two_workers_of_one_instance_deliver_each_message_exactly_once(make_app, smtp_server, database):
    key = secrets.token_urlsafe(48)
    async with serving_off_loop(database, _server_settings(smtp_server), workers=2, secret_key=key):
        await _queue_for_servers(database, smtp_server, key, 40, make_app)
        senders = await _assert_each_delivered_once(smtp_server, database, 40)
    print("deliveries per sender:", dict(senders))
