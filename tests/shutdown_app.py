"""The app with two more routes, for tests/test_shutdown.py: requests that take a while.

Served as ``hypercorn ... "tests/shutdown_app.py:create_app()"``; never part of the real app.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from quart import Quart, request

from quart_app import create_app as create_real_app


def create_app() -> Quart:
    """``quart_app.create_app()`` plus ``GET /slow`` and ``GET /block`` (``?seconds=S&started=PATH``).

    Each handler creates the file ``PATH`` (when given) as soon as it runs,
    so a test knows the request is in flight, then waits ``S`` seconds (2 by
    default) and answers 200 ``done``: ``/slow`` awaits (cancellable, like
    any request waiting on I/O), ``/block`` sleeps on the event loop itself
    (a handler stuck in blocking code, which nothing can cancel).
    """
    app = create_real_app()

    def begin() -> float:
        started = request.args.get("started")
        if started:
            Path(started).touch()
        return float(request.args.get("seconds", "2"))

    @app.get("/slow")
    async def slow() -> tuple[str, int]:
        await asyncio.sleep(begin())
        return "done", 200

    @app.get("/block")
    async def block() -> tuple[str, int]:
        time.sleep(begin())  # noqa: ASYNC251 (blocking the loop is the point)
        return "done", 200

    return app
