"""Stopping the server drains the requests in flight, however the stop signal is delivered.

Real hypercorn processes as hypercorn.toml runs them (two uvloop workers), on
127.0.0.1, serving the app plus two test-only routes (tests/shutdown_app.py):
``/slow`` awaits for a while, ``/block`` blocks its worker's event loop.
Connections are pinned to a chosen worker (``servers.connection_to``) so that
the workers drain unevenly, as they do in real life: with hypercorn alone the
master SIGTERMs every worker still draining as soon as the quickest one has
exited (quart_app/serving.py tells the whole story).

Each test: requests in flight on both workers, a stop signal, then every
request still within graceful_timeout is answered 200, a connection opened
after the stop began is not served, and the server exits by itself within
graceful_timeout + a margin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import FAST_HASHING, ROOT
from hypercorn.config import Config
from servers import PROC_NET_TCP, Server, client_for, connection_to, launch

from quart_app.serving import STOP_MARGIN

pytestmark = pytest.mark.skipif(not PROC_NET_TCP.exists(), reason="needs Linux /proc to pin connections to workers")

APP = "tests/shutdown_app.py:create_app()"
GRACEFUL_TIMEOUT = Config.from_toml(ROOT / "hypercorn.toml").graceful_timeout
# Slack on top of every deadline here: process exit, the poll of the stop event (0.1 s), a loaded CI machine.
SLACK = 1.5
# The longest a stop may take when every request finishes within graceful_timeout, or is cancelled at it.
STOPPED_WITHIN = GRACEFUL_TIMEOUT + SLACK
# A request that outlives any stop.
FOREVER = 600
# How long after the stop signal a new connection is tried.
LATE = 0.5


def signal_master(sig: int) -> Callable[[Server], None]:
    return lambda server: os.kill(server.process.pid, sig)


def signal_group(sig: int) -> Callable[[Server], None]:
    return lambda server: os.killpg(server.process.pid, sig)


@dataclass
class Outcome:
    answers: dict[str, int | str]  # request label -> status code, or the exception's class name
    late: str  # the same for a request on a connection opened after the stop began
    exit_code: int | None  # None: still running at the deadline
    stopped_after: float  # seconds from the signal to the main process's exit


@pytest.fixture
def server(database, tmp_path) -> Iterator[Server]:
    server = launch(database, FAST_HASHING, app=APP, log_path=tmp_path / "hypercorn.log")
    try:
        yield server
    finally:
        server.stop()  # SIGKILLs whatever a failed test left behind


async def stop_during(
    server: Server, plan: dict[str, tuple[int, str, float]], stop: Callable[[Server], None], *, deadline: float
) -> Outcome:
    """Send ``plan``'s requests, wait until each is in its handler, ``stop`` the server and see what happens.

    ``plan``: label -> (worker index, path, seconds); each request goes on a
    fresh connection held by that worker (0 or 1, in pid order). The server
    must exit within ``deadline`` seconds of the signal.
    """
    workers = sorted(server.worker_pids)
    marks = Path(server.log_path).parent / "started"
    marks.mkdir(exist_ok=True)
    timeout = httpx.Timeout(deadline + SLACK)

    async def one(client: httpx.AsyncClient, label: str, path: str, seconds: float) -> int | str:
        try:
            response = await client.get(path, params={"seconds": seconds, "started": str(marks / label)})
        except httpx.TransportError as error:
            return type(error).__name__
        return response.status_code if response.text == "done" else f"{response.status_code} {response.text[:80]}"

    async def late() -> str:
        await asyncio.sleep(LATE)
        async with client_for(server, timeout=timeout) as client:
            try:
                response = await client.get("/")
            except httpx.TransportError as error:
                return type(error).__name__
        return f"answered {response.status_code}"

    async with AsyncExitStack() as stack:
        clients = {}  # every connection first: pinning one may pause the other worker for a moment
        for label, (worker, _, _) in plan.items():
            clients[label] = await stack.enter_async_context(connection_to(server, workers[worker]))
            clients[label].timeout = timeout
        requests = {
            label: asyncio.create_task(one(clients[label], label, path, seconds))
            for label, (_, path, seconds) in plan.items()
        }
        for _ in range(200):  # 10 s at most for every request to reach its handler
            if all((marks / label).exists() for label in plan) or any(task.done() for task in requests.values()):
                break
            await asyncio.sleep(0.05)
        assert all((marks / label).exists() for label in plan), {
            label: task.result() for label, task in requests.items() if task.done()
        }
        signalled = time.monotonic()
        stop(server)
        late_task = asyncio.create_task(late())
        try:
            exit_code = await asyncio.to_thread(server.process.wait, deadline)
        except subprocess.TimeoutExpired:
            exit_code = None
        stopped_after = time.monotonic() - signalled
        answers = dict(zip(requests, await asyncio.gather(*requests.values()), strict=True))
        return Outcome(answers, await late_task, exit_code, round(stopped_after, 2))


def assert_drained(outcome: Outcome, server: Server, answered: set[str], *, deadline: float) -> None:
    context = f"{outcome}\nhypercorn's output:\n{server.log()}"
    for label in answered:
        assert outcome.answers[label] == 200, f"{label} was not answered: {context}"
    for label in set(outcome.answers) - answered:
        assert outcome.answers[label] != 200, f"{label} should have been cut off: {context}"
    assert not outcome.late.startswith("answered"), f"a connection opened after the stop was served: {context}"
    assert outcome.exit_code is not None, f"still running {deadline} s after the stop signal: {context}"
    assert outcome.stopped_after <= deadline, context


# Worker 0 finishes quickly and exits; worker 1 is still busy (hypercorn alone then SIGTERMs it).
UNEVEN = {
    "w0 0.5s": (0, "/slow", 0.5),
    "w0 1s": (0, "/slow", 1),
    "w1 2s": (1, "/slow", 2),
    "w1 3s": (1, "/slow", 3),
}


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(signal_master(signal.SIGTERM), id="SIGTERM-master"),
        pytest.param(signal_group(signal.SIGTERM), id="SIGTERM-group"),
        pytest.param(signal_group(signal.SIGINT), id="SIGINT-group"),
    ],
)
async def test_stop_signal_drains_requests_in_flight(server, stop):
    """SIGTERM to the master (``kill PID``), to the group (systemd's default, ``docker``'s ``tini -g``), Ctrl-C.

    Every request in flight on either worker is answered 200, nothing is
    served on a connection opened after the stop began, and hypercorn exits 0
    as soon as the last request is answered (well within graceful_timeout).
    """
    outcome = await stop_during(server, UNEVEN, stop, deadline=STOPPED_WITHIN)
    assert_drained(outcome, server, set(UNEVEN), deadline=STOPPED_WITHIN)
    assert outcome.exit_code == 0, outcome


async def test_request_outliving_graceful_timeout_does_not_hold_the_stop(server):
    """A request still running at graceful_timeout is cut off; the others are answered; the stop ends in time."""
    plan = {"w0 1s": (0, "/slow", 1), "w1 1s": (1, "/slow", 1), "w1 forever": (1, "/slow", FOREVER)}
    outcome = await stop_during(server, plan, signal_group(signal.SIGTERM), deadline=STOPPED_WITHIN)
    assert_drained(outcome, server, {"w0 1s", "w1 1s"}, deadline=STOPPED_WITHIN)
    assert outcome.exit_code == 0, outcome
    assert outcome.stopped_after >= GRACEFUL_TIMEOUT - SLACK, f"the long request was cut off early: {outcome}"


async def test_worker_stuck_on_its_event_loop_is_ended_by_the_watchdog(server):
    """A handler blocking its worker's event loop cannot be cancelled: the worker is ended at the watchdog's time.

    The other worker's request is answered, and the stop still ends within
    graceful_timeout + STOP_MARGIN (quart_app/serving.py), not never.
    """
    deadline = GRACEFUL_TIMEOUT + STOP_MARGIN + SLACK
    plan = {"w0 1s": (0, "/slow", 1), "w1 blocked": (1, "/block", FOREVER)}
    outcome = await stop_during(server, plan, signal_group(signal.SIGTERM), deadline=deadline)
    assert_drained(outcome, server, {"w0 1s"}, deadline=deadline)
    assert "still running" in server.log(), server.log()
