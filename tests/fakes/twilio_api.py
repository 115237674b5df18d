"""A local HTTP server that plays Twilio's Messages.json endpoint for the real twilio Client."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


@dataclass
class Sent:
    """One request the fake received: the account, the form fields, and the sid it answered with."""

    account_sid: str
    form: dict[str, str]
    sid: str
    authorization: str

    @property
    def to(self) -> str:
        return self.form.get("To", "")

    @property
    def body(self) -> str:
        return self.form.get("Body", "")


@dataclass
class Failure:
    status: int
    code: int | None = None
    message: str = "fake failure"
    delay: float = 0.0  # seconds to wait before answering (a timeout when longer than the client's)


@dataclass
class FakeTwilio:
    """Records accepted messages; `fail_next` makes the next requests fail as Twilio would."""

    account_sid: str = "AC" + "0" * 32
    auth_token: str = "test-auth-token"
    messages: list[Sent] = field(default_factory=list)
    failures: deque[Failure] = field(default_factory=deque)
    fail_ratio: float = 0.0
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    _rng_state: int = 12345

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, *failures: Failure) -> None:
        with self.lock:
            self.failures.extend(failures)

    def _next_failure(self) -> Failure | None:
        with self.lock:
            self.requests += 1
            if self.failures:
                return self.failures.popleft()
            if self.fail_ratio:
                self._rng_state = (self._rng_state * 1103515245 + 12345) % 2**31
                if self._rng_state / 2**31 < self.fail_ratio:
                    return Failure(500 if self._rng_state % 2 else 429, 20429 if self._rng_state % 2 == 0 else None)
        return None

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Sent]:
        """Wait until at least `count` messages arrived; returns them all (fails the test on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            got = [m.body[:60] for m in self.messages]
        raise AssertionError(f"expected {count} message(s) at the fake Twilio, got {len(got)}: {got}")

    def bodies_to(self, to: str) -> list[str]:
        with self.lock:
            return [m.body for m in self.messages if m.to == to]

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, payload: dict[str, object]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                parts = self.path.strip("/").split("/")
                # /2010-04-01/Accounts/{AccountSid}/Messages.json
                if len(parts) != 4 or parts[0] != "2010-04-01" or parts[3] != "Messages.json":
                    self._json(404, {"code": 20404, "message": "not found", "status": 404})
                    return
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{fake.account_sid}:{fake.auth_token}".encode()).decode()
                if auth != expected or parts[2] != fake.account_sid:
                    self._json(401, {"code": 20003, "message": "Authenticate", "status": 401})
                    return
                failure = fake._next_failure()
                if failure is not None:
                    if failure.delay:
                        time.sleep(failure.delay)
                    self._json(failure.status, {"code": failure.code, "message": failure.message,
                                                "status": failure.status, "more_info": ""})
                    return
                form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                if not form.get("To") or not (form.get("From") or form.get("MessagingServiceSid")):
                    self._json(400, {"code": 21604, "message": "A 'To' and a sender are required",
                                     "status": 400})
                    return
                sid = "SM" + uuid.uuid4().hex
                with fake.lock:
                    fake.messages.append(Sent(parts[2], form, sid, auth))
                self._json(201, {
                    "sid": sid, "account_sid": parts[2], "to": form["To"], "from": form.get("From"),
                    "body": form.get("Body", ""), "status": "queued", "num_segments": "1",
                    "direction": "outbound-api", "api_version": "2010-04-01", "error_code": None,
                    "messaging_service_sid": form.get("MessagingServiceSid"),
                    "uri": f"/2010-04-01/Accounts/{parts[2]}/Messages/{sid}.json",
                })

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
