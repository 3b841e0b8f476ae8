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
    SMTPServer(tls="smtps" or "starttls", certificate=self_signed_certificate(tmp_path))
                                   # implicit TLS, or STARTTLS required; trust the certificate with SSL_CERT_FILE

A message counts as received once DATA is answered 250 (when its client
hangs up before that, aiosmtpd cancels the handler and it is not recorded,
as a real relay would not have accepted it). Everything is bounded in time:
a held or delayed DATA is answered after MAX_HOLD seconds at most.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

__all__ = ["MAX_HOLD", "Received", "SMTPServer", "self_signed_certificate"]

# The longest any DATA is held or delayed (seconds): no test hangs on the server.
MAX_HOLD = 60.0
_LINK_RE = re.compile(r"https?://[^\s<>\"']+")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, valid for a day, and its key: (cert.pem, key.pem) in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class Received:
    """One accepted message: the parsed message (``email.policy.default``) and its envelope."""

    message: EmailMessage
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes = field(repr=False, default=b"")
    tls: bool = False  # whether it came over TLS (smtps, or after STARTTLS)

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
        tls = server.transport is not None and server.transport.get_extra_info("ssl_object") is not None
        owner._record(Received(message, envelope.mail_from, list(envelope.rcpt_tos), raw, tls))
        return "250 2.0.0 Message accepted"


class SMTPServer:
    """aiosmtpd on 127.0.0.1:``port`` (a free one by default); ``stop``/``start`` keep the port."""

    def __init__(
        self,
        port: int | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        tls: str | None = None,
        certificate: tuple[Path, Path] | None = None,
    ) -> None:
        assert tls in (None, "smtps", "starttls") and (tls is None) == (certificate is None)
        self.host = "127.0.0.1"
        self.port = port or _free_port()
        self.credentials = credentials
        self.tls = tls
        self.certificate = certificate
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
        scheme = {None: "smtp", "smtps": "smtps", "starttls": "smtp+starttls"}[self.tls]
        return f"{scheme}://{self.host}:{self.port}"

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
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*map(str, self.certificate))
            if self.tls == "smtps":
                options["ssl_context"] = context
            else:
                options.update(tls_context=context, require_starttls=True)
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
