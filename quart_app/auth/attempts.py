"""A check of a login secret (a password, a second factor's code) reserved in the login throttle.

Shared by the password login (service.py) and its second step (pending.py):
the same counters per account and per client, the same 429 with
``Retry-After`` and the same ``throttled`` audit row.
"""

from __future__ import annotations

from quart import request

from ..db import get_db
from ..exceptions import HTTPError
from ..models import User
from .events import audit
from .throttle import Attempt, Throttled, get_throttle, keys_for


def throttled(wait: int) -> HTTPError:
    """The 429 a client over the login throttle gets, with the seconds to wait."""
    return HTTPError(
        429,
        f"Too many failed login attempts. Try again in {wait} seconds.",
        headers={"Retry-After": str(wait)},
    )


async def begin_attempt(account: str, user: User | None) -> Attempt | None:
    """Reserve a check on ``account`` from this client (None: throttling is off); 429 when refused."""
    throttle = get_throttle()
    if not throttle.enabled:
        return None
    try:
        return await throttle.begin(keys_for(account, request.remote_addr))
    except Throttled as refused:
        audit("throttled", user, detail=f"retry after {refused.retry_after}s")
        await get_db().commit()
        raise throttled(refused.retry_after) from None
