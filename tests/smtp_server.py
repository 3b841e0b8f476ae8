"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, in a thread of its own, collecting what it receives.

    server = SMTPServer()          # a free port; server.url is smtp://127.0.0.1:PORT
    server.start()
    ...                            # the app sends to server.url
    received = await server.wait_for(1)          # bounded: fails after ``timeout`` seconds
    received[0].message["Subject"], received[0].text, received[0].links, received[0].rcpt_tos
    server.stop(); server.start()  # an outage: down, then back on the SAME port
    with server.holding():         # DATA is not answered until the block ends (a stalled server)
        ...; await server.wait_stalled(1)
    server.delay = 2.0             # every DATA answered 2 s late (a slow server)
    server.refused.add("nobody@example.com")     # RCPT TO that address: 550 (a permanent refusal)
    SMTPServer(credentials=("user", "secret"))   # AUTH offered (without TLS), checked, logins recorded

A message counts as received once DATA is answered 250 (when its client
hangs up before that, aiosmtpd cancels the handler and it is not recorded,
as a real relay would not have accepted it). Everything is bounded in time:
a held or delayed DATA is answered after MAX_HOLD seconds at most.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["MAX_HOLD", "Received", "SMTPServer"]

# The longest any DATA is held or delayed (seconds): no test hangs on the server.
MAX_HOLD = 60.0
_LINK_RE = re.compile(r"https?://[^\s<>\"']+")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Received:
    """One accepted message: the parsed message (``email.policy.default``) and its envelope."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes = field(repr=False, default=b"")

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None and body.get_content_subtype() == subtype, f"no text/{subtype} part"
        return body.get_content()

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")

    @property
    def links(self) -> list[str]:
        """The http(s) links of the text part, in order."""
        return _LINK_RE.findall(self.text)


class _Handler:
    def __init__(self, owner: SMTPServer) -> None:
        self.owner = owner

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.owner.refused:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        owner = self.owner
        loop = asyncio.get_running_loop()
        started = loop.time()
        with owner._condition:
            owner._stalled += 1
            owner._condition.notify_all()
        try:
            # Polled: delay and the gate are set from other threads (no asyncio.Event).
            while True:
                waited = loop.time() - started
                if waited >= MAX_HOLD or (waited >= owner.delay and owner._open.is_set()):
                    break
                await asyncio.sleep(0.01)
        finally:
            with owner._condition:
                owner._stalled -= 1
                owner._condition.notify_all()
        raw = envelope.original_content or envelope.content
        try:  # SMTPUTF8 messages carry UTF-8 in their headers: parsed as text, they read as sent
            message = email.message_from_string(raw.decode("utf-8"), policy=email.policy.default)
        except UnicodeDecodeError:
            message = email.message_from_bytes(raw, policy=email.policy.default)
        owner._record(Received(message, envelope.mail_from, list(envelope.rcpt_tos), raw))
        return "250 2.0.0 Message accepted"


class SMTPServer:
    """aiosmtpd on 127.0.0.1:``port`` (a free one by default); ``stop``/``start`` keep the port."""

    def __init__(self, port: int | None = None, *, credentials: tuple[str, str] | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.credentials = credentials
        self.delay = 0.0
        self.refused: set[str] = set()
        self.logins: list[tuple[str, str]] = []
        self._received: list[Received] = []
        self._condition = threading.Condition()
        self._stalled = 0
        self._open = threading.Event()
        self._open.set()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self._condition:
            return list(self._received)

    @property
    def stalled(self) -> int:
        """DATA commands being held or delayed right now."""
        with self._condition:
            return self._stalled

    @property
    def running(self) -> bool:
        return self._controller is not None

    def _record(self, received: Received) -> None:
        with self._condition:
            self._received.append(received)
            self._condition.notify_all()

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = (auth_data.login.decode(), auth_data.password.decode())
        self.logins.append(login)
        # handled=False: aiosmtpd answers (235, or 535 for a refusal) itself.
        return AuthResult(success=login == self.credentials, handled=False)

    def start(self) -> SMTPServer:
        """Listen (again) on ``port``; returns once it accepts connections."""
        assert self._controller is None, "already running"
        options = {}
        if self.credentials is not None:
            options = {"authenticator": self._authenticate, "auth_required": False, "auth_require_tls": False}
        for _ in range(100):  # the port may linger a moment after a stop
            controller = Controller(
                _Handler(self), hostname=self.host, port=self.port, enable_SMTPUTF8=True, ready_timeout=10, **options
            )
            try:
                controller.start()
                break
            except (OSError, RuntimeError):
                time.sleep(0.05)
        else:
            raise AssertionError(f"the SMTP server could not listen on {self.host}:{self.port} again")
        self._controller = controller
        return self

    def stop(self) -> None:
        """Stop listening and drop every connection (an outage); ``start`` brings it back on the same port."""
        controller, self._controller = self._controller, None
        if controller is not None:
            self._open.set()  # nothing held survives the stop
            controller.stop()

    @contextmanager
    def holding(self) -> Iterator[None]:
        """DATA is answered only after the block (or MAX_HOLD): a server that stalls."""
        self._open.clear()
        try:
            yield
        finally:
            self._open.set()

    async def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:  # noqa: ASYNC109
        """Every message received once there are at least ``count``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.received
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(found)} message(s) received in {timeout} s, expected {count}")
            await asyncio.sleep(0.02)

    async def wait_stalled(self, count: int = 1, timeout: float = 15.0) -> None:  # noqa: ASYNC109
        """Until ``count`` DATA commands are being held or delayed (bounded)."""
        deadline = time.monotonic() + timeout
        while self.stalled < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.stalled} DATA command(s) stalled after {timeout} s, expected {count}")
            await asyncio.sleep(0.01)

    def __enter__(self) -> SMTPServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
