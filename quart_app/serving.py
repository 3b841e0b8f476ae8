"""Stopping the served app in order: what a stop signal does to a hypercorn worker process.

With ``workers >= 1`` hypercorn runs a master process and spawns the workers.
On SIGTERM or SIGINT the master sets a shared event; each worker then stops
accepting, lets its requests in flight finish for up to ``graceful_timeout``
seconds, cancels what is left, and exits. That orderly path only works when
the stop signal reaches the master alone. Two things defeat it (hypercorn
0.18, ``hypercorn/run.py``):

1. The workers keep SIGTERM's default action: the master sets SIGINT to
   SIG_IGN before it spawns them (so Ctrl-C leaves them alone), but not
   SIGTERM. A SIGTERM sent to the whole process group (systemd's default
   ``KillMode=control-group``, ``kill -- -PGID``, ``tini -g``) kills every
   worker at once, and every request in flight is dropped unanswered.
2. As soon as one worker has finished draining, the master leaves its loop
   and calls ``terminate()`` (SIGTERM) on every worker still draining, which
   kills them too. So even a SIGTERM to the master alone, or Ctrl-C, drops
   the requests of any worker slower to drain than the quickest one.

``install(app)`` fixes both from inside each worker, once it is serving:

- SIGTERM and SIGINT no longer kill a worker: it leaves the stop to its
  master, as hypercorn already intends for SIGINT (the master has the
  signal too when it went to the group, and when the master itself sends
  SIGTERM to a worker still draining, the stop is under way). The drain is
  hypercorn's own, driven by the master's event. The signal is *not* passed
  on to the master: the master's handler sets a ``multiprocessing.Event``,
  whose lock is not re-entrant, and a second SIGTERM landing while the first
  handler holds it deadlocks the master and, with it, every worker (measured:
  about one group stop in ten hung that way when workers forwarded theirs).
  Only a worker whose master is gone (SIGKILLed, say) still dies of the
  signal, as before: nothing else would ever stop it. So stop the server by
  signalling the master or the whole group, not one worker.
- A watchdog bounds the stop: once the master's stop event is set, a worker
  still running ``graceful_timeout + STOP_MARGIN`` seconds later exits
  (``os._exit(1)``), and the kernel kills it one second after that with
  SIGALRM should even that not run. Hypercorn itself cancels requests still
  running at ``graceful_timeout``; the watchdog is for what cancelling cannot
  stop (a handler blocking the event loop, a shutdown hook that hangs). It
  polls the event, as hypercorn's workers do, rather than wait on it: a
  waiter makes the master's ``set()`` wait for it to wake, widening the
  window for the deadlock above.

Outside a hypercorn worker (tests, ``quart`` commands, hypercorn with
``--workers 0``, which handles its signals itself) it does nothing.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event
from types import FrameType

from hypercorn.config import Config
from quart import Quart

__all__ = ["STOP_MARGIN", "STOP_SIGNALS", "install"]

log = logging.getLogger(__name__)

# Seconds a worker may run past graceful_timeout once the stop began: hypercorn
# cancels what is left at graceful_timeout, then runs the app's shutdown hooks
# (closing the database pool), which take well under a second.
STOP_MARGIN = 2.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How often the watchdog looks at the master's stop event (hypercorn's own loop: every 0.1 s). Each look
# takes the event's lock for a moment; a worker killed outright while holding it would leave the master's
# set() stuck, so look no more often than the deadline needs: it may start this much late.
WATCH_INTERVAL = 0.5


def install(app: Quart) -> None:
    """Make each hypercorn worker serving ``app`` survive group stop signals and drain in order (see above)."""
    app.before_serving(_guard_worker)


def _hypercorn_worker() -> tuple[Config, Event] | None:
    """This worker's hypercorn config and the master's stop event, or None outside a hypercorn worker.

    hypercorn starts each worker as ``Process(target=..., kwargs={"config":
    ..., "shutdown_event": ..., "sockets": ...})`` (``_populate`` in
    ``hypercorn/run.py``); in the worker, ``current_process()`` is that
    Process object, its arguments included. They are private attributes, so
    anything unexpected means "not a worker": tests/test_shutdown.py would
    then see requests dropped again.
    """
    if multiprocessing.parent_process() is None or threading.current_thread() is not threading.main_thread():
        return None
    kwargs = getattr(multiprocessing.current_process(), "_kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    config, shutdown_event = kwargs.get("config"), kwargs.get("shutdown_event")
    if not isinstance(config, Config) or not isinstance(shutdown_event, Event):
        return None
    return config, shutdown_event


async def _guard_worker() -> None:
    worker = _hypercorn_worker()
    if worker is None:
        return
    config, shutdown_event = worker
    master = os.getppid()

    def on_stop_signal(signum: int, _frame: FrameType | None) -> None:
        if os.getppid() != master:  # orphaned: no master will ever stop this worker in order
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        # Otherwise nothing: the master stops the server (see the module's docstring).

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)
    threading.Thread(
        target=_watchdog,
        args=(shutdown_event, config.graceful_timeout + STOP_MARGIN),
        name="stop-watchdog",
        daemon=True,
    ).start()


def _watchdog(shutdown_event: Event, seconds: float) -> None:
    """Once the stop began, end this worker after ``seconds`` if it is still running."""
    while not shutdown_event.is_set():
        time.sleep(WATCH_INTERVAL)
    # Kernel-enforced backstop, for a worker whose every thread is stuck.
    signal.setitimer(signal.ITIMER_REAL, seconds + 1)
    time.sleep(seconds)
    log.error("worker %d still running %.1f s after the stop began: exiting", os.getpid(), seconds)
    os._exit(1)
