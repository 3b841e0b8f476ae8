"""The ``users`` command group: ``quart --app "quart_app:create_app()" users ...``."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import click
from quart import Quart

from .auth import enrolment, passkeys, recovery, service
from .db import get_db
from .exceptions import HTTPError
from .models import MAX_ID


def run_in_app(app: Quart, work: Callable[[], Awaitable[Any]]) -> Any:
    """Start the app's services (engine, hash pool), run ``work`` in an app context, stop them."""

    async def main() -> Any:
        await app.startup()
        try:
            async with app.app_context():
                return await work()
        finally:
            await app.shutdown()

    return asyncio.run(main())


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def _read_password() -> str:
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    line = sys.stdin.readline()
    if not line:
        _fail("no password on standard input")
    return line.rstrip("\r\n")


def register_cli(app: Quart) -> None:
    @app.cli.group("users")
    def users() -> None:
        """Manage user accounts."""

    @users.command("create", with_appcontext=False)
    @click.argument("username")
    @click.argument("email")
    def create(username: str, email: str) -> None:
        """Create an account (password from a prompt, or from standard input)."""
        password = _read_password()

        async def work():
            return await service.create_user({"username": username, "email": email, "password": password})

        try:
            user = run_in_app(app, work)
        except HTTPError as exc:
            _fail("; ".join(f"{k}: {v}" for k, v in exc.fields.items()) if exc.fields else exc.message)
        click.echo(f"Created user {user.username} (id {user.id}).")

    @users.command("list", with_appcontext=False)
    def list_() -> None:
        """List every account."""

        async def work():
            return await service.list_users()

        rows = run_in_app(app, work)
        click.echo(f"{'id':>5}  {'username':<32}  {'email':<40}  active")
        for user in rows:
            click.echo(f"{user.id:>5}  {user.username:<32}  {user.email:<40}  {'yes' if user.is_active else 'no'}")

    def _with_user(username: str, action: Callable[[Any], Awaitable[Any]]) -> Any:
        async def work():
            user = await service.find_user(username)
            if user is None:
                return None, None
            return user, await action(user)

        user, result = run_in_app(app, work)
        if user is None:
            _fail(f"no user named {username!r}")
        return user, result

    @users.command("deactivate", with_appcontext=False)
    @click.argument("username")
    def deactivate(username: str) -> None:
        """Deactivate an account: it cannot log in and its sessions are revoked at once."""
        user, _ = _with_user(username, lambda u: service.set_active(u, False))
        click.echo(f"Deactivated {user.username}; every session of theirs is revoked.")

    @users.command("activate", with_appcontext=False)
    @click.argument("username")
    def activate(username: str) -> None:
        """Reactivate an account."""
        user, _ = _with_user(username, lambda u: service.set_active(u, True))
        click.echo(f"Activated {user.username}.")

    @users.command("revoke-sessions", with_appcontext=False)
    @click.argument("username")
    def revoke_sessions(username: str) -> None:
        """Log an account out everywhere."""
        user, count = _with_user(username, service.revoke_all_sessions)
        click.echo(f"Revoked {count} session(s) of {user.username}.")

    @users.command("verify-email", with_appcontext=False)
    @click.argument("username")
    def verify_email(username: str) -> None:
        """Mark USERNAME's address verified without a mailed link (support confirmed it another way)."""
        user, _ = _with_user(username, recovery.mark_verified)
        click.echo(f"Verified {user.email} for {user.username}.")

    @users.command("reset-2fa", with_appcontext=False)
    @click.argument("username")
    def reset_2fa(username: str) -> None:
        """Remove USERNAME's second factors and recovery codes (support checked who asks); sessions revoked."""
        user, (removed, revoked) = _with_user(username, enrolment.reset_factors)
        if removed:
            click.echo(f"Removed the second factor(s) of {user.username}; revoked {revoked} session(s).")
        else:
            click.echo(f"{user.username} had no second factor; revoked {revoked} session(s).")

    @users.command("passkeys", with_appcontext=False)
    @click.argument("username")
    def list_passkeys(username: str) -> None:
        """List USERNAME's passkeys: id, name, when added and last used."""

        async def listed(user: Any) -> list[dict[str, Any]]:
            found = await passkeys.passkeys_of(user)
            await get_db().commit()
            return [passkeys.describe(factor) for factor in found]

        user, rows = _with_user(username, listed)
        if not rows:
            click.echo(f"{user.username} has no passkey.")
            return
        for row in rows:
            used = row["last_used_at"] or "never"
            click.echo(f"{row['id']:>6}  {row['name']}  added {row['created_at']}  last used {used}")

    @users.command("remove-passkey", with_appcontext=False)
    @click.argument("username")
    @click.argument("passkey_id", type=click.IntRange(1, MAX_ID))
    def remove_passkey(username: str, passkey_id: int) -> None:
        """Remove one of USERNAME's passkeys (support checked who asks): a notice mailed, every session revoked."""

        async def removed(user: Any) -> str | None:
            try:
                await enrolment.remove_passkey(user, passkey_id, by_support=True)
            except HTTPError as error:
                return error.message
            return None

        user, problem = _with_user(username, removed)
        if problem is not None:
            _fail(problem)
        click.echo(f"Removed passkey {passkey_id} of {user.username}; every session of theirs is revoked.")
