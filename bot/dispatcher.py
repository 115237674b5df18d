"""The in-process sender: a thread that empties the outbox as soon as something is queued."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from werkzeug.wrappers import Response

from bot.outbox import Outbox

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Dispatcher:
    """Sends due outbox rows within about a second of `wake()`; one thread per process (fork-safe)."""

    def __init__(self, outbox: Outbox, clock: Callable[[], datetime] = utcnow, idle_seconds: float = 1.0,
                 enabled: bool = True):
        self.outbox, self.clock, self.idle = outbox, clock, idle_seconds
        self.enabled = enabled  # False (VEREDA_DISPATCHER=off): this web process queues, a worker sends
        self._event = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread in this process if it is not running (after a fork it is not)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="vereda-dispatcher", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        if not self.enabled:
            return
        self.ensure_started()
        self._event.set()

    def replies_sent_after(self, response: Response, keys: tuple[str, ...]) -> None:
        """Send one request's replies from its own thread once the answer is written (`response.call_on_close`),
        and wake the dispatcher for anything else (and for these, if the server never closes the response)."""
        if not self.enabled:
            return
        if not keys:
            self.wake()
            return
        self.ensure_started()  # it still sends everything else (retries, drips) within about a second
        # The dispatcher is woken only for what this thread leaves (a send to retry, an earlier message of the
        # learner in flight, a rate limit): waking it for every request would have it race this thread for the
        # same rows, one more claim per message. A response never closed is found by its next idle pass (1 s).
        response.call_on_close(lambda: self._send_now(keys))

    def _send_now(self, keys: tuple[str, ...]) -> None:
        done = self.outbox.send_now(list(keys), self.clock)
        if done.sent < len(keys):
            self.wake()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        recovered_at = 0.0
        while not self._stop.is_set():
            self._event.clear()
            wait = self.idle
            try:
                monotonic = time.monotonic()
                if monotonic - recovered_at > 30:
                    self.outbox.recover(self.clock())
                    recovered_at = monotonic
                if self.outbox.dispatch(self.clock, stop=self._stop.is_set).throttled:
                    wait = min(self.idle, 0.2)  # messages wait for their rate limit: look again soon
            except Exception:  # the database or a sender failed unexpectedly: log, wait, go on
                log.exception("dispatcher pass failed")
            self._event.wait(wait)
