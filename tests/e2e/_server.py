"""Shared by the end-to-end tests: `python app.py` and `vereda` as subprocesses, configured only through their
environment, and waiting for what reaches a fake provider."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.fakes.twilio_api import FakeTwilio, Sent
from tests.helpers import SETTINGS_VARIABLES

ROOT = Path(__file__).resolve().parents[2]
LESSONS = ROOT / "lessons"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(**values: str) -> dict[str, str]:
    """This process's environment with every variable Settings reads set: to `values`, the others to "" (so
    neither the developer's shell nor a `.env` file changes the run). Local addresses bypass any proxy the
    machine sets, so the app's clients reach the fakes directly."""
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARIABLES}
    env.update(dict.fromkeys(SETTINGS_VARIABLES, ""))
    env.update({"PYTHONUNBUFFERED": "1", **values})
    for name in ("NO_PROXY", "no_proxy"):
        env[name] = ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get(name)]))
    return env


def vereda(*args: str) -> list[str]:
    """The command line of `vereda ARGS`: the console script beside this Python, else `python -m bot.cli`."""
    script = Path(sys.executable).with_name("vereda")
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "bot.cli", *args]


def backend(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


class AppProcess:
    """`python app.py` in `workdir` on a free local port, configured only through its environment:
    `environment(**values)` with HOST and PORT, and PUBLIC_BASE_URL the local address unless `values` set it.
    Its output goes to `workdir`/NAME.stdout and NAME.stderr."""

    def __init__(self, workdir: Path, name: str = "app", **values: str) -> None:
        self.workdir, self.port = workdir, free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = environment(**{"PUBLIC_BASE_URL": self.base_url, **values, "HOST": "127.0.0.1",
                                  "PORT": str(self.port)})
        self.stdout_path, self.stderr_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        self.process: subprocess.Popen[bytes] | None = None
        self.killed = False

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait until GET /healthz answers 200 (fails the test if it exits or never does)."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=self.workdir,
                                            env=self.env, stdout=out, stderr=err)
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"python app.py exited with {self.process.returncode}:\n{self.stderr()}")
            try:
                response = httpx.get(f"{self.base_url}/healthz", timeout=2.0, trust_env=False)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as error:
                last = type(error).__name__
            time.sleep(0.1)
        pytest.fail(f"GET /healthz did not answer 200 within {timeout:.0f} s ({last}):\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def logs(self) -> str:
        """Everything it wrote: stdout, then stderr."""
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return out + self.stderr()

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate and wait; kill only if SIGTERM was not enough (then `killed`). Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode


@contextmanager
def serve(workdir: Path, **values: str) -> Iterator[AppProcess]:
    """An `AppProcess(workdir, **values)`, started, and stopped afterwards (for a test's `server` fixture)."""
    app = AppProcess(workdir, **values)
    try:
        app.start()
        yield app
    finally:
        app.stop()


def twilio_messages(fake: FakeTwilio) -> list[Sent]:
    """The messages the fake Twilio has accepted so far."""
    with fake.lock:
        return list(fake.messages)


def wait_for(read: Callable[[], list[T]], count: int, timeout: float, failure: Callable[[list[T]], str]) -> list[T]:
    """Read until at least `count` items are there, and return them; after `timeout` seconds fail the test
    with `failure(what was read last)`."""
    deadline = time.monotonic() + timeout
    while True:
        items = read()
        if len(items) >= count:
            return items
        if time.monotonic() > deadline:
            pytest.fail(failure(items))
        time.sleep(0.02)
