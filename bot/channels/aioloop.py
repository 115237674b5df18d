"""One long-lived asyncio event loop in a thread, for async SDKs called from sync code.

python-telegram-bot is asyncio-based. Calling it with `asyncio.run()` from Flask or a scheduler thread
creates and closes a loop each time, and a `Bot` reused across those calls dies with "Event loop is
closed". Instead the Bot lives on this one loop, and threads submit coroutines to it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore's async path (under python-telegram-bot's httpx client) tries `import sniffio` several times per
    # request; without the package each try scans sys.path with stat() calls that drop the GIL. A None entry
    # makes those tries fail at once, and httpcore then assumes asyncio, which is what runs here.
    # (bench/telegram.py: a send costs about 25 % less CPU; +15 % sends/s from one thread, +60 % from 8.)
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


class LoopThread:
    """An event loop running forever in a daemon thread (restarted after a fork)."""

    def __init__(self, name: str = "vereda-asyncio") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:  # stop(): release the loop's self-pipe and selector
                        try:
                            loop.run_until_complete(loop.shutdown_asyncgens())
                        finally:
                            loop.close()

                threading.Thread(target=run, name=self.name, daemon=True).start()
                ready.wait()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        """Run `coroutine` on the loop and wait for its result (from any thread but the loop's own)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop()).result(timeout)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coroutine` on the loop and return at once (its future says how it ended)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop())

    def stop(self) -> None:
        with self._lock:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None
