"""Passwords and secrets: argon2id hashing on a bounded thread pool, never on the event loop."""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError
from quart import Quart, current_app
from werkzeug.security import check_password_hash as werkzeug_check

from ..exceptions import HashQueueFull
from .config import Settings

# Prefixes of the hashes Werkzeug's generate_password_hash writes (what the
# sync Flask version stores); they are verified once and replaced by argon2id.
WERKZEUG_PREFIXES = ("scrypt:", "pbkdf2:")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification; ``needs_rehash`` asks for the stored hash to be replaced."""

    ok: bool
    needs_rehash: bool = False


def _lower_thread_priority() -> None:
    # Hash threads yield the CPU to the event loop threads (Linux: per-thread nice).
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class PasswordHasher:
    """argon2id hashing and verification on at most ``workers`` threads at a time.

    argon2-cffi and hashlib release the GIL while they compute, so threads give
    real parallelism; the pool size bounds how much CPU hashing can take.
    """

    def __init__(self, *, time_cost: int, memory_cost: int, parallelism: int, workers: int, max_pending: int) -> None:
        self._argon2 = Argon2Hasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism, type=Type.ID)
        self._workers = workers
        # Admission control: beyond this many hashes in flight (running or
        # queued) a new login gets 503 instead of waiting for minutes.
        self._max_pending = max_pending
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None
        # Verified against when the user does not exist, so that an unknown
        # username costs the same time as a wrong password.
        self._dummy_hash: str | None = None

    def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._workers,
                thread_name_prefix="password-hash",
                initializer=_lower_thread_priority,
            )

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    async def _run(self, func, *args):
        if self._pool is None:
            raise RuntimeError("PasswordHasher used before start() (is the app serving?)")
        if self._pending >= self._max_pending:
            raise HashQueueFull()
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, func, *args)
        finally:
            self._pending -= 1

    @property
    def pending(self) -> int:
        """Hashes running or queued in this worker."""
        return self._pending

    async def hash(self, password: str) -> str:
        return await self._run(self._hash_sync, password)

    def _hash_sync(self, password: str) -> str:
        return self._argon2.hash(password)

    async def verify(self, stored_hash: str | None, password: str) -> Verdict:
        """Check ``password`` against ``stored_hash``; ``None`` means "no such user"."""
        if stored_hash is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
            await self._run(self._verify_sync, self._dummy_hash, password)
            return Verdict(ok=False)
        return await self._run(self._verify_sync, stored_hash, password)

    def _verify_sync(self, stored_hash: str, password: str) -> Verdict:
        if stored_hash.startswith(WERKZEUG_PREFIXES):
            try:
                ok = werkzeug_check(stored_hash, password)
            except (ValueError, TypeError):
                ok = False
            return Verdict(ok=ok, needs_rehash=ok)
        try:
            self._argon2.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return Verdict(ok=False)
        return Verdict(ok=True, needs_rehash=self._argon2.check_needs_rehash(stored_hash))


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass"))


EXTENSION = "quart_app.hasher"


def init_app(app: Quart, settings: Settings) -> PasswordHasher:
    """The app's hasher: its threads start when serving starts and stop when it ends."""
    hasher = PasswordHasher(
        time_cost=settings.ARGON2_TIME_COST,
        memory_cost=settings.ARGON2_MEMORY_COST,
        parallelism=settings.ARGON2_PARALLELISM,
        workers=settings.HASH_WORKERS,
        max_pending=settings.HASH_QUEUE_LIMIT,
    )
    app.extensions[EXTENSION] = hasher

    @app.before_serving
    async def _start_hasher() -> None:
        hasher.start()

    @app.after_serving
    async def _stop_hasher() -> None:
        hasher.shutdown()

    return hasher


def get_hasher() -> PasswordHasher:
    """The password hasher of the running app."""
    return current_app.extensions[EXTENSION]
