"""A local HTTP server that plays the Telegram Bot API for the real python-telegram-bot `Bot`."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

TOKEN = "123456:TEST-token_for-vereda"


@dataclass
class Call:
    method: str
    params: dict[str, Any]


@dataclass
class TgFailure:
    status: int  # 429 (with retry_after) or 403 (blocked) or 400
    description: str = "Forbidden: bot was blocked by the user"
    retry_after: int | None = None


@dataclass
class FakeTelegram:
    """Records every Bot API call; `fail_next(method, …)` makes the next calls of a method fail."""

    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, deque[TgFailure]] = field(default_factory=dict)
    webhook: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    next_message_id: int = 1000
    proxied: list[str] = field(default_factory=list)  # absolute-form targets: requests sent to us as a proxy

    @property
    def base_url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def fail_next(self, method: str, *failures: TgFailure) -> None:
        with self.lock:
            self.failures.setdefault(method, deque()).extend(failures)

    def sent(self, chat_id: int | None = None) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == "sendMessage"
                    and (chat_id is None or int(c.params["chat_id"]) == chat_id)]

    def of(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def wait_for(self, count: int, chat_id: int | None = None, timeout: float = 5.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.sent(chat_id)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        texts = [c.params.get("text", "")[:50] for c in self.sent(chat_id)]
        raise AssertionError(f"expected {count} sendMessage call(s), got {len(texts)}: {texts}")

    def _answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            queue = self.failures.get(method)
            failure = queue.popleft() if queue else None
            if failure is None:
                self.calls.append(Call(method, params))
        if failure is not None:
            body: dict[str, Any] = {"ok": False, "error_code": failure.status, "description": failure.description}
            if failure.retry_after is not None:
                body["parameters"] = {"retry_after": failure.retry_after}
                body["description"] = f"Too Many Requests: retry after {failure.retry_after}"
            return failure.status, body
        bot_user = {"id": 123456, "is_bot": True, "first_name": "Vereda", "username": "vereda_test_bot"}
        if method == "getMe":
            return 200, {"ok": True, "result": bot_user}
        if method == "sendMessage":
            with self.lock:
                self.next_message_id += 1
                message_id = self.next_message_id
            chat_id = int(params["chat_id"])
            result = {"message_id": message_id, "date": int(time.time()), "from": bot_user,
                      "chat": {"id": chat_id, "type": "private"}, "text": params.get("text", "")}
            if params.get("reply_markup"):
                result["reply_markup"] = params["reply_markup"]
            return 200, {"ok": True, "result": result}
        if method in ("answerCallbackQuery", "deleteWebhook"):
            if method == "deleteWebhook":
                self.webhook = {}
            return 200, {"ok": True, "result": True}
        if method == "editMessageReplyMarkup":
            return 200, {"ok": True, "result": True}
        if method == "setWebhook":
            self.webhook = dict(params)
            return 200, {"ok": True, "result": True, "description": "Webhook was set"}
        if method == "getWebhookInfo":
            info = {"url": self.webhook.get("url", ""), "has_custom_certificate": False, "pending_update_count": 0,
                    "allowed_updates": self.webhook.get("allowed_updates", [])}
            return 200, {"ok": True, "result": info}
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def start(self) -> FakeTelegram:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                prefix = f"/bot{fake.token}/"
                path = self.path
                if "://" in path:  # `POST http://host/bot…/method`: the client takes us for its HTTP proxy
                    with fake.lock:
                        fake.proxied.append(path)
                    path = "/" + path.split("://", 1)[1].partition("/")[2]
                if not path.startswith(prefix):
                    status, body = 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                else:
                    method = path[len(prefix):].split("?")[0]
                    status, body = fake._answer(method, _params(raw, self.headers.get("Content-Type", "")))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def _params(raw: str, content_type: str) -> dict[str, Any]:
    """python-telegram-bot posts form fields whose values are JSON; raw clients may post JSON."""
    if not raw:
        return {}
    if content_type.startswith("application/json"):
        return dict(json.loads(raw))
    params: dict[str, Any] = {}
    for key, values in parse_qs(raw, keep_blank_values=True).items():
        value = values[-1]
        try:
            params[key] = json.loads(value) if value[:1] in "[{" else value
        except ValueError:
            params[key] = value
    return params
