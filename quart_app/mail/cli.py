"""The ``mail`` command group: ``quart --app "quart_app:create_app()" mail status|retry|send``.

These commands never start a background sender of their own (outbox.py):
``status`` and ``retry`` only read and change rows, and the running servers'
senders pick retried messages up at their next poll; ``send`` delivers what
is due once, in the foreground, and exits (for cron, or without a server).
"""

from __future__ import annotations

import sys
from typing import Any

import click
from quart import Quart

from ..cli import run_in_app
from .outbox import BATCH, get_mailer

__all__ = ["register_mail_cli"]

# `mail send` stops after this many rounds of BATCH messages (a bound, should rows keep coming).
SEND_ROUNDS = 1000


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)


def register_mail_cli(app: Quart) -> None:
    @app.cli.group("mail")
    def mail() -> None:
        """The mail outbox: what waits, what failed; send again."""

    @mail.command("status", with_appcontext=False)
    @click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Rows listed at most.")
    def status(limit: int) -> None:
        """Counts per status, and a line per failed or long-pending message."""
        mailer = get_mailer(app)

        async def work():
            return await mailer.status(limit=limit)

        found = run_in_app(app, work)
        counts = found["counts"]
        click.echo("  ".join(f"{name}: {counts.get(name, 0)}" for name in ("pending", "sent", "failed")))
        if not mailer.enabled:
            click.echo("QUART_APP_MAIL_URL is off: nothing is queued or sent.")
        rows = found["rows"]
        if not rows:
            return
        click.echo("")
        click.echo("Failed, retried or long-pending messages (oldest first):")
        header = f"{'id':>6}  {'status':<7}  {'kind':<20}  {'tries':>5}  {'created (UTC)':<19}"
        click.echo(f"{header}  recipient: last error")
        for id_, state, kind, recipient, attempts, last_error, created_at in rows:
            click.echo(
                f"{id_:>6}  {state:<7}  {kind:<20}  {attempts:>5}  {_when(created_at):<19}  "
                f"{recipient}: {last_error or '-'}"
            )
        if found["more"]:
            click.echo(f"... and {found['more']} more (--limit)")
        if any(row[1] == "failed" for row in rows):
            click.echo("")
            click.echo("Send a failed message again with `mail retry ID` (or `mail retry --all-failed`).")

    @mail.command("retry", with_appcontext=False)
    @click.argument("ids", nargs=-1, type=click.IntRange(min=1))
    @click.option("--all-failed", is_flag=True, help="Every failed message.")
    def retry(ids: tuple[int, ...], all_failed: bool) -> None:
        """Put failed messages back in the queue: due now, their tries counted from zero."""
        if bool(ids) == all_failed:
            _fail("give message ids (see `mail status`) or --all-failed, not both")
        mailer = get_mailer(app)

        async def work():
            return await mailer.retry(None if all_failed else list(ids))

        retried, others, unknown = run_in_app(app, work)
        if unknown:
            _fail(f"no message with id {', '.join(map(str, unknown))}; nothing was changed")
        for id_ in others:
            click.echo(f"Message {id_} is not failed: left as it is.")
        if not retried:
            click.echo("No failed message to send again.")
            return
        click.echo(f"Queued {len(retried)} message(s) to be sent again: {', '.join(map(str, retried))}.")
        if mailer.enabled:
            click.echo("A running server sends them at its next poll (or run `mail send`).")
        else:
            click.echo("QUART_APP_MAIL_URL is off: nothing is sent until it is set.")

    @mail.command("send", with_appcontext=False)
    def send() -> None:
        """Deliver the messages due now, once, and exit (for cron, or without a running server)."""
        mailer = get_mailer(app)
        if not mailer.enabled:
            _fail("QUART_APP_MAIL_URL is off: nothing can be sent")

        async def work():
            outcomes: list[str] = []
            for _ in range(SEND_ROUNDS):
                batch = await mailer.deliver_due()
                outcomes.extend(batch)
                if len(batch) < BATCH:
                    break
            return outcomes

        outcomes = run_in_app(app, work)
        counts = {name: outcomes.count(name) for name in ("sent", "retry", "failed", "lost")}
        click.echo(
            f"Sent {counts['sent']}; {counts['retry']} to be tried again later; {counts['failed']} failed"
            + (f"; {counts['lost']} left to another sender" if counts["lost"] else "")
            + "."
        )
        if counts["retry"] or counts["failed"]:
            sys.exit(1)
