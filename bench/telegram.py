"""Telegram benchmarks: Vereda's sends against raw httpx, and the Telegram webhook against a bare Flask route.

    python bench/telegram.py [--messages 2000] [--seconds 10] [--part a|b|both] [--backend sqlite|postgresql|both]

(a) Sends. N messages through `TelegramSender.send` (python-telegram-bot's `Bot` on Vereda's one asyncio loop
    thread, called from plain threads as the dispatcher calls it) and, in the same run, interleaved round by
    round, the same N messages as raw `httpx` POSTs to the same fake's sendMessage: a sync `httpx.Client`
    (keep-alive; one per thread) and an `httpx.AsyncClient` with as many concurrent tasks as there are sender
    threads (each task's connection opened before the timing). For information, also as raw `aiohttp` posts
    (the transport under Vereda's Bot, bot/channels/aiohttp_request.py): Vereda/raw-aiohttp is what PTB and
    the loop thread add on top of the transport; the goal is against raw httpx. Thread counts: 1 (one
    learner's messages, in order), 4 and bot.outbox.SEND_THREADS (the dispatcher's send pool on SQLite and
    on PostgreSQL: different learners side by side through the one loop). It prints messages/s, the
    Vereda/raw ratios (goal >= 0.7) and the CPU used by the fake and by this process, to tell which of the
    two is the bottleneck. --api-delay-ms makes the fake answer late, as api.telegram.org does.
(b) Inbound webhook. `gunicorn 'app:create_app()'` with the settings of bench/webhook.py (-w 2 --threads 4), on
    SQLite and on a fresh PostgreSQL schema, the repository's lessons and the fake Bot API as
    TELEGRAM_API_BASE_URL; 20 simulated Telegram users (one private chat each) post Updates with the secret
    header: /start, /start <course>, menu and quiz button presses built from the inline keyboards the fake
    received (or well-formed `q:<course>:<lesson>:<question>|<n>` data when none has arrived yet), text answers,
    /next and /status, each with a new update_id. The same load against a bare route answering 200 `{}` under
    the same gunicorn gives the ratio.

The fake Bot API (tests/fakes/telegram_api.py's FakeTelegram over ThreadingHTTPServer, HTTP/1.1 keep-alive)
runs in its own process, so it shares no GIL with the sender. Only 127.0.0.1 is contacted; every process started
here is stopped on exit, Ctrl-C and --max-minutes included. Helpers (gunicorn start/stop, schema, CPU counters)
come from bench/webhook.py.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# Run as `python bench/telegram.py`, this folder is first on sys.path and this file would stand in for
# python-telegram-bot's `telegram` package: put the repository there instead (bench/ is then a namespace
# package, so bench.webhook and bench.bare_app import as usual).
if sys.path and Path(sys.path[0] or ".").resolve() == BENCH:
    sys.path.pop(0)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PATH = "/webhooks/telegram"
SECRET = "bench-webhook-secret"
GOAL_SEND_RATIO = 0.7
BOT_USER = {"id": 123456, "is_bot": True, "first_name": "Vereda", "username": "vereda_test_bot"}


# -- the bare route (gunicorn 'bench.telegram:create_bare_app()', from the repository) ---------------------------
def create_bare_app():  # type: ignore[no-untyped-def]
    """bench/bare_app.py's app plus POST /webhooks/telegram answering 200 `{}`: no secret check, no parsing."""
    from flask import Response

    from bench.bare_app import create_app

    app = create_app()

    @app.post(PATH)
    def telegram_update() -> Response:
        return Response("{}", mimetype="application/json")

    return app


# -- the fake Bot API in its own process -------------------------------------------------------------------------
def serve_fake() -> None:
    """`--serve-fake`: run FakeTelegram, print its base URL, serve until stdin closes (the parent went away)."""
    # As bench/webhook.py does for the fake Twilio: api.telegram.org keeps connections alive, http.server's
    # default HTTP/1.0 would close each one. The fake always sends Content-Length, so HTTP/1.1 is safe;
    # TCP_NODELAY, or every answer (headers and body are two writes) waits for a delayed ACK.
    http.server.BaseHTTPRequestHandler.protocol_version = "HTTP/1.1"
    http.server.BaseHTTPRequestHandler.disable_nagle_algorithm = True
    fake = _bench_fake_class()(delay=float(os.environ.get("BENCH_API_DELAY_MS") or 0) / 1000).start()
    print(fake.base_url, flush=True)
    sys.stdin.read()  # EOF: the parent closed the pipe or died
    fake.stop()


def _bench_fake_class() -> type:
    from tests.fakes.telegram_api import FakeTelegram

    @dataclass
    class BenchFake(FakeTelegram):
        """FakeTelegram that keeps no call log (it grows without end under load), counts calls per method,
        remembers each chat's latest inline keyboard, and answers `_benchStats` / `_benchKeyboards`."""

        counts: Counter[str] = field(default_factory=Counter)
        keyboards: dict[int, dict[str, Any]] = field(default_factory=dict)
        seq: int = 0
        delay: float = 0.0  # seconds each Bot API call waits before answering (--api-delay-ms: the network)

        def _answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            if method == "_benchStats":
                with self.lock:
                    return 200, {"ok": True, "result": dict(self.counts)}
            if method == "_benchKeyboards":
                since = int(params.get("since") or 0)
                with self.lock:
                    fresh = {chat: kb for chat, kb in self.keyboards.items() if kb["seq"] > since}
                    return 200, {"ok": True, "result": {"seq": self.seq, "keyboards": fresh}}
            if self.delay:
                time.sleep(self.delay)  # in this connection's handler thread: concurrent calls overlap
            status, body = super()._answer(method, params)
            with self.lock:
                self.calls.clear()
                self.counts[method if status == 200 else f"{method}:{status}"] += 1
                if method == "sendMessage" and status == 200 and params.get("reply_markup"):
                    result = body["result"]
                    self.seq += 1
                    self.keyboards[int(params["chat_id"])] = {
                        "seq": self.seq, "message_id": result["message_id"], "text": result["text"][:200],
                        "reply_markup": params["reply_markup"]}
            return status, body

    return BenchFake


class FakeProcess:
    """The fake Bot API in a child process (its own session, so bench/webhook.py's _stop ends it)."""

    def __init__(self, delay_ms: float = 0.0) -> None:
        from bench import webhook

        command = [sys.executable, str(Path(__file__).resolve()), "--serve-fake"]
        env = dict(os.environ, PYTHONUNBUFFERED="1", BENCH_API_DELAY_MS=str(delay_ms))
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        webhook._children.append(self.proc)  # type: ignore[arg-type]
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("http://127.0.0.1:"):
            webhook._stop(self.proc)  # type: ignore[arg-type]
            raise RuntimeError(f"the fake Bot API did not start (said {line!r})")
        self.base_url = line
        import httpx

        from tests.fakes.telegram_api import TOKEN

        self.token = TOKEN
        self._control = httpx.Client(base_url=f"{line}/bot{TOKEN}", timeout=5.0, trust_env=False)

    def cpu_seconds(self) -> float:
        from bench.webhook import _tree_cpu_seconds

        return _tree_cpu_seconds(self.proc.pid)

    def control(self, method: str, **params: Any) -> Any:
        return self._control.post(f"/{method}", json=params).json()["result"]

    def stats(self) -> Counter[str]:
        return Counter(self.control("_benchStats"))

    def stop(self) -> None:
        from bench import webhook

        self._control.close()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the fake leaves on EOF
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        webhook._stop(self.proc)  # type: ignore[arg-type]


# -- (a) sends ---------------------------------------------------------------------------------------------------
LESSON_TEXT = (
    "La seguridad humana pone en el centro a las personas, no solo a los Estados. El concepto apareció en el "
    "Informe sobre Desarrollo Humano de 1994 del PNUD: vivir libres del temor y libres de la miseria. Ese informe "
    "describe siete dimensiones: económica, alimentaria, de salud, ambiental, personal, comunitaria y política.\n\n"
    "En 2012, la Asamblea General de la ONU fijó en su resolución 66/290 un entendimiento común: el derecho de las "
    "personas a vivir en libertad y con dignidad."
)
QUESTION = ("¿Qué informe presentó la idea de seguridad humana?",
            ("El Protocolo de Palermo (2000)", "El Informe sobre Desarrollo Humano 1994",
             "La Ley de Migración de México (2011)"))


def outgoing_messages(count: int) -> list[Any]:
    """What the dispatcher hands the sender: a lesson, its question with 3 buttons, a short reply, in turn."""
    from bot.channels.base import Outgoing

    out = []
    for n in range(count):
        chat = str(800_000_000 + n % 500)
        kind = n % 3
        if kind == 0:
            out.append(Outgoing(n, "telegram", chat, None, LESSON_TEXT, ()))
        elif kind == 1:
            out.append(Outgoing(n, "telegram", chat, None, QUESTION[0], QUESTION[1],
                                ref=f"q:seguridad-humana:{n % 7}:{n % 3}"))
        else:
            out.append(Outgoing(n, "telegram", chat, None, "¡Correcto! El PNUD la presentó en 1994.", ()))
    return out


def raw_form(message: Any) -> dict[str, str]:
    """The form python-telegram-bot posts for `send` (same fields, same JSON-encoded reply_markup)."""
    form = {"chat_id": message.to_address, "text": message.body}
    if message.buttons:
        prefix = message.ref or ""
        form["reply_markup"] = json.dumps({"inline_keyboard": [
            [{"text": label[:64], "callback_data": f"{prefix}|{n}"[-64:]}]
            for n, label in enumerate(message.buttons, start=1)]})
    return form


@dataclass
class SendRun:
    mode: str
    threads: int
    messages: int
    seconds: float
    errors: int
    client_cpu: float
    fake_cpu: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


def _chunks(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def _in_threads(parts: list[list[Any]], work: Callable[[list[Any]], int]) -> int:
    """Run `work` on each part in its own thread, all released at once; the errors they count, summed."""
    errors = [0] * len(parts)
    barrier = threading.Barrier(len(parts))

    def one(index: int) -> None:
        barrier.wait()
        errors[index] = work(parts[index])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(parts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return sum(errors)


def send_vereda(sender: Any, messages: list[Any], threads: int) -> int:
    def work(part: list[Any]) -> int:
        return sum(0 if sender.send(m).ok else 1 for m in part)

    return work(messages) if threads == 1 else _in_threads(_chunks(messages, threads), work)


def send_raw_sync(url: str, forms: list[dict[str, str]], threads: int, clients: list[Any]) -> int:
    def work(index_and_part: list[Any]) -> int:
        index, part = index_and_part[0], index_and_part[1]
        client = clients[index]
        errors = 0
        for form in part:
            response = client.post(url, data=form)
            errors += response.status_code != 200 or not response.json().get("ok")
        return errors

    parts = _chunks(forms, threads)
    if threads == 1:
        return work([0, parts[0]])
    return _in_threads([[i, p] for i, p in enumerate(parts)], lambda ip: work(ip))


def send_raw_async(url: str, forms: list[dict[str, str]], concurrency: int) -> int:
    import httpx

    async def main() -> int:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)  # as HTTPXRequest(32)
        async with httpx.AsyncClient(limits=limits, timeout=10.0, trust_env=False) as client:
            # One connection per task opened outside the timing, as the others have theirs from the warm-up.
            get_me = url.rsplit("/", 1)[0] + "/getMe"
            await asyncio.gather(*(client.post(get_me) for _ in range(concurrency)))
            items = iter(forms)
            errors = 0

            async def worker() -> None:
                nonlocal errors
                for form in items:
                    response = await client.post(url, data=form)
                    errors += response.status_code != 200 or not response.json().get("ok")

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return errors

    return asyncio.run(main())


def send_raw_aiohttp(url: str, forms: list[dict[str, str]], concurrency: int) -> int:
    """The same posts with aiohttp, the HTTP library under Vereda's Bot (bot/channels/aiohttp_request.py): what
    the transport alone costs, so the rest of the gap is PTB and the loop thread."""
    from urllib.parse import urlencode

    import aiohttp

    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    async def main() -> int:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32),
                                         timeout=aiohttp.ClientTimeout(total=10.0)) as session:
            get_me = url.rsplit("/", 1)[0] + "/getMe"

            async def connect() -> None:
                async with session.post(get_me) as response:
                    await response.read()

            await asyncio.gather(*(connect() for _ in range(concurrency)))  # outside the timing, as above
            items = iter(forms)
            errors = 0

            async def worker() -> None:
                nonlocal errors
                for form in items:
                    async with session.post(url, data=urlencode(form).encode(), headers=headers) as response:
                        body = json.loads(await response.read())
                    errors += response.status != 200 or not body.get("ok")

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return errors

    return asyncio.run(main())


def bench_sends(args: argparse.Namespace, fake: FakeProcess) -> list[list[SendRun]]:
    import httpx

    from bot.channels.telegram import TelegramSender
    from bot.config import Settings

    settings = Settings(telegram_bot_token=fake.token, telegram_webhook_secret=SECRET,
                        telegram_api_base_url=fake.base_url, rate_limits=None)
    sender = TelegramSender(settings)
    url = f"{fake.base_url}/bot{fake.token}/sendMessage"
    messages = outgoing_messages(args.messages)
    forms = [raw_form(m) for m in messages]
    levels: list[list[SendRun]] = []
    try:
        for threads in args.threads_list:
            clients = [httpx.Client(timeout=10.0, trust_env=False) for _ in range(threads)]
            # Warm-up (not measured): the Bot's initialize() (getMe), connections opened, code paths hot.
            warm = outgoing_messages(50 * threads)
            send_vereda(sender, warm, threads)
            send_raw_sync(url, [raw_form(m) for m in warm], threads, clients)
            send_raw_async(url, [raw_form(m) for m in warm[:50]], threads)
            send_raw_aiohttp(url, [raw_form(m) for m in warm[:50]], threads)
            modes: dict[str, Callable[[], int]] = {
                "vereda": lambda: send_vereda(sender, messages, threads),  # noqa: B023
                "raw-sync": lambda: send_raw_sync(url, forms, threads, clients),  # noqa: B023
                "raw-async": lambda: send_raw_async(url, forms, threads),  # noqa: B023
                "raw-aiohttp": lambda: send_raw_aiohttp(url, forms, threads),  # noqa: B023
            }
            runs: dict[str, list[SendRun]] = {mode: [] for mode in modes}
            for round_ in range(args.rounds):
                first = round_ % len(modes)
                order = list(modes)[first:] + list(modes)[:first]  # each mode goes first in turn
                for mode in order:
                    before = fake.stats()["sendMessage"]
                    cpu0, fake0, t0 = time.process_time(), fake.cpu_seconds(), time.perf_counter()
                    errors = modes[mode]()
                    elapsed = time.perf_counter() - t0
                    run = SendRun(mode, threads, len(messages), elapsed, errors,
                                  time.process_time() - cpu0, fake.cpu_seconds() - fake0)
                    got = fake.stats()["sendMessage"] - before
                    if got != len(messages):
                        run.errors += abs(len(messages) - got)
                    runs[mode].append(run)
                    print(f"  (a) {threads} thread(s) round {round_ + 1}/{args.rounds} {mode:<9} "
                          f"{run.rate:8.0f} msg/s", flush=True)
            for client in clients:
                client.close()
            levels.append([_median_run(rs) for rs in runs.values()])
    finally:
        sender.close()
    return levels


def _median_run(runs: list[SendRun]) -> SendRun:
    ordered = sorted(runs, key=lambda r: r.rate)
    median = ordered[len(ordered) // 2]
    median.errors = sum(r.errors for r in runs)
    return median


def report_sends(levels: list[list[SendRun]], args: argparse.Namespace) -> bool:
    print()
    delay = f", answering after {args.api_delay_ms:g} ms" if args.api_delay_ms else ""
    print(f"(a) sends: {args.messages} messages per run, median of {args.rounds} interleaved rounds; fake Bot API "
          f"in its own process (FakeTelegram, ThreadingHTTPServer, HTTP/1.1 keep-alive{delay}); {os.cpu_count()} "
          f"CPU(s), {100 * args.busy_before:.0f}% busy before the run")
    names = {"vereda": "TelegramSender.send (PTB Bot on loop thread)",
             "raw-sync": "raw httpx.Client, keep-alive",
             "raw-async": "raw httpx.AsyncClient",
             "raw-aiohttp": "raw aiohttp (Vereda's transport)"}
    header = (f"{'threads':>7}  {'mode':<46}{'msg/s':>8}{'ms/msg':>8}{'errors':>7}{'this proc CPU':>15}"
              f"{'fake CPU':>10}{'CPU ms/msg':>12}")
    print(header)
    print("-" * len(header))
    ok = True
    for runs in levels:
        by_mode = {r.mode: r for r in runs}
        for r in runs:
            label = names[r.mode] + (f" x{r.threads} tasks" if r.mode in ("raw-async", "raw-aiohttp") else "")
            print(f"{r.threads:>7}  {label:<46}{r.rate:>8.0f}{1000 / r.rate if r.rate else 0:>8.2f}{r.errors:>7}"
                  f"{100 * r.client_cpu / r.seconds:>14.0f}%{100 * r.fake_cpu / r.seconds:>9.0f}%"
                  f"{1000 * r.client_cpu / r.messages:>12.2f}")
        vereda = by_mode["vereda"]
        for raw in ("raw-sync", "raw-async", "raw-aiohttp"):
            if raw not in by_mode:
                continue
            ratio = vereda.rate / by_mode[raw].rate if by_mode[raw].rate else 0.0
            if raw == "raw-aiohttp":  # not the goal (raw httpx): how much PTB and the loop hop cost
                print(f"{'':>9}vereda/{raw} = {vereda.rate:.0f}/{by_mode[raw].rate:.0f} = {ratio:.2f}   "
                      "(same transport: the rest is PTB's Bot and the loop thread)")
                continue
            verdict = "PASS" if ratio >= GOAL_SEND_RATIO else "MISS"
            ok &= ratio >= GOAL_SEND_RATIO
            print(f"{'':>9}vereda/{raw} = {vereda.rate:.0f}/{by_mode[raw].rate:.0f} = {ratio:.2f}   "
                  f"goal >= {GOAL_SEND_RATIO}: {verdict}")
        ok &= not any(r.errors for r in runs)
    if "sniffio" in sys.modules and sys.modules["sniffio"] is None:
        print("  note: sniffio is not installed; bot/channels/aioloop.py makes httpcore's per-request "
              "`import sniffio` fail at once (in this process: the Bot's and the raw AsyncClient's requests)")
    else:
        try:
            import sniffio  # noqa: F401
        except ImportError:
            print("  note: sniffio is not installed: httpcore's async path retries `import sniffio` several times "
                  "per request, a sys.path scan each time (see bench/README.md)")
    fastest = max((r for runs in levels for r in runs), key=lambda r: r.rate)
    busiest_fake = max(r.fake_cpu / r.seconds for runs in levels for r in runs)
    cores = os.cpu_count() or 1
    print(f"  the fake used at most {100 * busiest_fake:.0f}% of one core (one GIL: ~100% means it is the limit); "
          f"fastest mode {fastest.mode} x{fastest.threads} at {fastest.rate:.0f} msg/s; "
          f"{cores} core(s) shared by this process and the fake")
    return ok


# -- (b) inbound webhook -----------------------------------------------------------------------------------------
QUIZ = "seguridad-humana"  # 3-question quiz per lesson
READER = "ruta-segura"  # lessons without a quiz
MENU_QUIZ = 2  # its place in the /start menu (courses sorted by folder name)

# One simulated person's updates in order; after the last, a new person (a new chat id) takes their place.
SCRIPTS = [
    [("/start", "/start"), ("press", "menu"), ("press", "q"), ("answer", "2"), ("press", "q"), ("/next", "/next"),
     ("press", "q"), ("answer", "1"), ("press", "q"), ("/status", "/status")],
    [("/start course", f"/start {QUIZ}"), ("answer", "1"), ("press", "q"), ("press", "q"), ("/next", "/next"),
     ("answer", "3"), ("press", "q"), ("press", "q"), ("/status", "/status")],
    [("/start course", f"/start {READER}"), ("/next", "/next"), ("/status", "/status"), ("/next", "/next"),
     ("answer", "hola")],
]


class Keyboards:
    """Each chat's latest inline keyboard as the fake received it, fetched every 50 ms by one thread."""

    def __init__(self, fake: FakeProcess) -> None:
        self.fake = fake
        self.latest: dict[int, dict[str, Any]] = {}
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="keyboards", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.05):
            try:
                found = self.fake.control("_benchKeyboards", since=self.seq)
            except Exception:
                continue
            for chat, keyboard in found["keyboards"].items():
                self.latest[int(chat)] = keyboard
            self.seq = found["seq"]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


@dataclass
class Person:
    index: int
    generation: int = 0
    step: int = 0
    pressed: set[int] = field(default_factory=set)  # message ids whose keyboard this person already pressed
    rng: random.Random = field(default_factory=random.Random)

    @property
    def script(self) -> list[tuple[str, str]]:
        return SCRIPTS[self.index % len(SCRIPTS)]

    @property
    def chat_id(self) -> int:
        return 700_000_000 + self.index * 100_000 + self.generation

    def next_step(self) -> tuple[str, str]:
        kind, value = self.script[self.step]
        self.step += 1
        if self.step == len(self.script):
            self.step, self.generation, self.pressed = 0, self.generation + 1, set()
        return kind, value


class Updates:
    """Telegram Update bodies with unique update_ids (and message ids, callback query ids)."""

    def __init__(self) -> None:
        self.ids = itertools.count(random.randrange(10**8, 9 * 10**8))

    def user(self, chat_id: int) -> dict[str, Any]:
        return {"id": chat_id, "is_bot": False, "first_name": "Ana", "language_code": "es"}

    def message(self, chat_id: int, text: str) -> dict[str, Any]:
        message: dict[str, Any] = {
            "message_id": next(self.ids) % 10**6, "from": self.user(chat_id),
            "chat": {"id": chat_id, "first_name": "Ana", "type": "private"}, "date": int(time.time()), "text": text}
        if text.startswith("/"):
            message["entities"] = [{"offset": 0, "length": len(text.split(" ", 1)[0]), "type": "bot_command"}]
        return {"update_id": next(self.ids), "message": message}

    def press(self, chat_id: int, message_id: int, text: str, markup: dict[str, Any] | None,
              data: str) -> dict[str, Any]:
        message: dict[str, Any] = {"message_id": message_id, "from": BOT_USER, "date": int(time.time()),
                                   "chat": {"id": chat_id, "first_name": "Ana", "type": "private"}, "text": text}
        if markup:
            message["reply_markup"] = markup
        query = {"id": str(next(self.ids)), "from": self.user(chat_id), "message": message,
                 "chat_instance": str(chat_id * 7), "data": data}
        return {"update_id": next(self.ids), "callback_query": query}


def next_update(person: Person, updates: Updates, keyboards: Keyboards | None) -> tuple[str, dict[str, Any]]:
    """The person's next Update and its kind (a press says whether it came from a received keyboard)."""
    kind, value = person.next_step()
    if kind != "press":
        return kind, updates.message(person.chat_id, value)
    keyboard = keyboards.latest.get(person.chat_id) if keyboards else None
    if keyboard is not None and keyboard["message_id"] not in person.pressed:
        person.pressed.add(keyboard["message_id"])
        rows = keyboard["reply_markup"]["inline_keyboard"]
        menu = f"menu|{MENU_QUIZ}"
        if value == "menu" and any(row[0]["callback_data"] == menu for row in rows):
            data = menu
        else:
            data = person.rng.choice(rows)[0]["callback_data"]
        return "press (keyboard)", updates.press(person.chat_id, keyboard["message_id"], keyboard["text"],
                                                 keyboard["reply_markup"], data)
    # No new keyboard yet (the reply is still on its way): well-formed data, as a fast double tap would send.
    data = f"menu|{MENU_QUIZ}" if value == "menu" else f"q:{QUIZ}:0:0|{person.rng.randint(1, 3)}"
    message_id = keyboard["message_id"] if keyboard else 1
    return "press (fallback)", updates.press(person.chat_id, message_id, "…", None, data)


class Crowd:
    """`concurrency` Telegram users, each on its own keep-alive connection, posting as fast as answered."""

    def __init__(self, concurrency: int, keyboards: Keyboards | None, fake_pid: int | None = None) -> None:
        self.fake_pid = fake_pid  # whose CPU to count during the measurement
        self.people = [Person(i, rng=random.Random(i)) for i in range(concurrency)]
        self.keyboards = keyboards
        self.updates = Updates()
        self.stop = threading.Event()
        self.clients: dict[int, Any] = {}

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def run(self, server: Any, seconds: float) -> Any:
        import httpx

        from bench.webhook import Phase, _machine_busy_seconds, _postgres_cpu_seconds, _tree_cpu_seconds

        phase = Phase()
        lock = threading.Lock()
        window: dict[str, float] = {}
        fake_pid = self.fake_pid

        def begin() -> None:
            window["cpu0"], window["client0"] = _tree_cpu_seconds(server.proc.pid), time.process_time()
            window["db0"], window["busy0"] = _postgres_cpu_seconds(), _machine_busy_seconds()
            window["fake0"] = _tree_cpu_seconds(fake_pid) if fake_pid else 0.0
            window["t0"] = time.monotonic()
            window["deadline"] = window["t0"] + seconds

        barrier = threading.Barrier(len(self.people) + 1, action=begin)
        headers = {"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET}

        def one(person: Person) -> None:
            latencies: list[float] = []
            statuses: Counter[int] = Counter()
            kinds: Counter[str] = Counter()
            samples: dict[int, str] = {}
            by_kind: dict[str, list[float]] = {}
            client = self.clients.get(person.index)
            if client is None:
                limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
                client = httpx.Client(base_url=server.base_url, timeout=10.0, limits=limits, trust_env=False)
                self.clients[person.index] = client
            barrier.wait()
            while not self.stop.is_set() and time.monotonic() < window["deadline"]:
                kind, update = next_update(person, self.updates, self.keyboards)
                body = json.dumps(update).encode()
                started = time.perf_counter()
                try:
                    response = client.post(PATH, content=body, headers=headers)
                    status, text = response.status_code, response.text
                except httpx.HTTPError as error:
                    status, text = 0, f"{type(error).__name__}: {error}"
                latencies.append(time.perf_counter() - started)
                by_kind.setdefault(kind.split(" ")[0], []).append(latencies[-1])
                statuses[status] += 1
                kinds[kind] += 1
                if status != 200 and status not in samples:
                    samples[status] = text[:200]
            with lock:
                phase.latencies.extend(latencies)
                phase.statuses.update(statuses)
                phase.kinds.update(kinds)
                for status, text in samples.items():
                    phase.samples.setdefault(status, text)
                for kind, values in by_kind.items():
                    phase.by_kind.setdefault(kind, []).extend(values)  # type: ignore[attr-defined]

        phase.by_kind = {}  # type: ignore[attr-defined]
        threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in self.people]
        for thread in threads:
            thread.start()
        barrier.wait()
        try:
            for thread in threads:
                thread.join(seconds + 30)
        except KeyboardInterrupt:
            self.stop.set()
            raise
        phase.elapsed = time.monotonic() - window["t0"]
        phase.server_cpu = _tree_cpu_seconds(server.proc.pid) - window["cpu0"]
        phase.client_cpu = time.process_time() - window["client0"]
        phase.db_cpu = _postgres_cpu_seconds() - window["db0"]
        phase.machine_cpu = _machine_busy_seconds() - window["busy0"]
        phase.fake_cpu = (_tree_cpu_seconds(fake_pid) - window["fake0"]) if fake_pid else 0.0  # type: ignore[attr-defined]
        return phase


@dataclass
class WebhookResult:
    backend: str
    target: str
    phase: Any
    calls: Counter[str] = field(default_factory=Counter)  # Bot API calls the fake got during the measurement
    drained_in_ms: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    note: str = ""


def bench_webhook_backend(backend: str, args: argparse.Namespace, fake: FakeProcess) -> list[WebhookResult]:
    from bench import webhook

    results: list[WebhookResult] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"vereda-bench-telegram-{backend}-"))
    schema: str | None = None
    keyboards = Keyboards(fake)
    try:
        database_url, schema = webhook._database(backend, workdir)
        webhook._migrate(database_url)  # before gunicorn: its workers racing to migrate (see bench/webhook.py)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELEGRAM_", "VEREDA_"))}
        for target in args.targets:
            port = webhook.free_port()
            env = dict(base_env, PYTHONUNBUFFERED="1")
            if target == "vereda":
                env.update(DATABASE_URL=database_url, LESSONS_DIR=str(ROOT / "lessons"), TELEGRAM_BOT_TOKEN=fake.token,
                           TELEGRAM_WEBHOOK_SECRET=SECRET, TELEGRAM_API_BASE_URL=fake.base_url,
                           VEREDA_SCHEDULER="off", RATE_LIMITS="off", LOG_LEVEL="WARNING")
                server = webhook.start_gunicorn(target, "app:create_app()", ROOT, env, port, args.workers,
                                                args.threads, workdir, "/healthz", "GET")
            else:
                server = webhook.start_gunicorn(target, "bench.telegram:create_bare_app()", ROOT, env, port,
                                                args.workers, args.threads, workdir, PATH, "POST")
            crowd = Crowd(args.concurrency, keyboards if target == "vereda" else None, fake.proc.pid)
            try:
                print(f"  (b) {backend:<10} {target:<6} port {port}: warm-up {args.warmup:g} s …", flush=True)
                crowd.run(server, args.warmup)
                before = fake.stats()
                print(f"  (b) {backend:<10} {target:<6} measuring {args.seconds:g} s …", flush=True)
                spy = webhook._py_spy(args, f"telegram-{backend}", target, webhook._worker_pids(server.proc.pid))
                phase = crowd.run(server, args.seconds)
                for proc in spy:
                    proc.wait(30)
                result = WebhookResult(backend, target, phase, calls=fake.stats() - before)
                if target == "vereda":
                    result.drained_in_ms = webhook._wait_for_drain(None, database_url, args.drain)  # type: ignore[arg-type]
                    result.outbox = webhook._outbox_counts(database_url)
                if server.proc.poll() is not None:
                    result.note = f"gunicorn exited with {server.proc.returncode}"
                tail = server.log_tail(8)
                if tail and ("Traceback" in tail or "ERROR" in tail or "CRITICAL" in tail):
                    result.note = (result.note + " " if result.note else "") + f"log: {server.log}"
                    args.keep_workdir = True
                results.append(result)
            finally:
                crowd.stop.set()
                crowd.close()
                webhook._stop(server.proc)
    finally:
        keyboards.close()
        if schema is not None:
            webhook._drop_schema(schema)
        if args.keep_workdir:
            print(f"  (kept {workdir} for its gunicorn logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def report_webhook(results: list[WebhookResult], args: argparse.Namespace) -> bool:
    from bench.webhook import GOAL_P99_MS, GOAL_RATIO

    print()
    print(f"(b) POST {PATH}: gunicorn -w {args.workers} --threads {args.threads} (gthread); {args.concurrency} "
          f"concurrent Telegram users (one private chat each), keep-alive, closed loop; warm-up {args.warmup:g} s, "
          f"measured {args.seconds:g} s; {os.cpu_count()} CPU(s) shared by server, database, load generator and fake "
          f"({100 * args.busy_before:.0f}% busy before the run)"
          + (f"; the fake answers after {args.api_delay_ms:g} ms" if args.api_delay_ms else ""))
    header = (f"{'backend':<11}{'target':<8}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}{'requests':>9}"
              f"{'app CPU':>8}{'db CPU':>7}{'fake CPU':>9}{'gen CPU':>8}{'app+db ms/req':>14}")
    print(header)
    print("-" * len(header))
    ok = True
    by_backend: dict[str, dict[str, WebhookResult]] = {}
    for r in results:
        p = r.phase
        rate = p.count / p.elapsed if p.elapsed else 0.0
        db = p.db_cpu if r.backend == "postgresql" else 0.0

        def share(seconds: float, elapsed: float = p.elapsed) -> str:
            return f"{100 * seconds / elapsed:.0f}%" if elapsed else "-"

        per = 1000 * (p.server_cpu + db) / p.count if p.count else 0.0
        print(f"{r.backend:<11}{r.target:<8}{rate:>8.1f}{p.percentile(0.5):>8.1f}{p.percentile(0.99):>8.1f}"
              f"{p.errors:>7}{p.count:>9}{share(p.server_cpu):>8}{share(db):>7}{share(p.fake_cpu):>9}"
              f"{share(p.client_cpu):>8}{per:>14.2f}" + (f"  {r.note}" if r.note else ""))
        by_backend.setdefault(r.backend, {})[r.target] = r
        ok &= not p.errors
    print()
    for backend, targets in by_backend.items():
        vereda, bare = targets.get("vereda"), targets.get("bare")
        if vereda is None:
            continue
        v = vereda.phase
        v_rate = v.count / v.elapsed if v.elapsed else 0.0
        if bare is not None:
            b_rate = bare.phase.count / bare.phase.elapsed if bare.phase.elapsed else 0.0
            ratio = v_rate / b_rate if b_rate else 0.0
            print(f"{backend}: throughput vereda/bare = {v_rate:.1f}/{b_rate:.1f} = {ratio:.2f}   (the Twilio "
                  f"webhook's goal >= {GOAL_RATIO}: {'PASS' if ratio >= GOAL_RATIO else 'MISS'}); vereda p99 "
                  f"{v.percentile(0.99):.1f} ms (goal < {GOAL_P99_MS:g} ms: "
                  f"{'PASS' if v.percentile(0.99) < GOAL_P99_MS else 'MISS'})")
        for target, r in targets.items():
            if r.phase.errors:
                print(f"{backend}: {target} errors {r.phase.errors}: " + ", ".join(
                    f"{s or 'no answer'}x{n}" for s, n in sorted(r.phase.statuses.items()) if s != 200))
                for status, text in r.phase.samples.items():
                    print(f"    {status or 'no answer'}: {text!r}")
        mix = ", ".join(f"{k} {100 * n / v.count:.0f}%" for k, n in v.kinds.most_common()) if v.count else "-"
        print(f"{backend}: update mix: {mix}")
        from bench.webhook import percentile

        by_kind = ", ".join(f"{kind} {1000 * percentile(sorted(values), 0.5):.0f}/"
                            f"{1000 * percentile(sorted(values), 0.99):.0f}"
                            for kind, values in sorted(v.by_kind.items()))
        print(f"{backend}: vereda latency p50/p99 ms by update kind: {by_kind}")
        calls = ", ".join(f"{m} {n} ({n / v.elapsed:.0f}/s)" for m, n in vereda.calls.most_common()) or "none"
        drained = (f"outbox empty {vereda.drained_in_ms} ms after the load" if vereda.drained_in_ms >= 0
                   else f"outbox NOT empty {args.drain:g} s after the load")
        outbox = ", ".join(f"{k} {n}" for k, n in sorted(vereda.outbox.items()))
        print(f"{backend}: fake Bot API calls during the measurement: {calls}; {drained} (rows: {outbox})")
    return ok


# -- main --------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="(a) messages per run (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="(a) interleaved rounds, median reported (default 3)")
    parser.add_argument("--send-threads", default=None,
                        help="(a) sender thread counts, comma-separated (default 1,4,N: one learner's messages in "
                             "order; the dispatcher's send pool on SQLite (4) and on PostgreSQL (N = "
                             "bot.outbox.SEND_THREADS))")
    parser.add_argument("--seconds", type=float, default=10.0, help="(b) measured seconds per target (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="(b) unmeasured seconds first (default 3)")
    parser.add_argument("--concurrency", type=int, default=20, help="(b) concurrent Telegram users (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="(b) gunicorn -w (default 2, as bench/webhook.py)")
    parser.add_argument("--threads", type=int, default=4, help="(b) gunicorn --threads (default 4, ditto)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--target", choices=["both", "vereda", "bare"], default="both")
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--drain", type=float, default=15.0, help="(b) max seconds to wait for the outbox to empty")
    parser.add_argument("--max-minutes", type=float, default=20.0, help="stop everything after this long (default 20)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with gunicorn logs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="(b) profile each worker with py-spy (raw stacks)")
    parser.add_argument("--py-spy-idle", action="store_true", help="with --py-spy: sample waiting threads too")
    parser.add_argument("--api-delay-ms", type=float, default=0.0,
                        help="the fake waits this long before each answer, like the way to api.telegram.org and "
                             "back (default 0: pure overhead)")
    parser.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_fake:
        serve_fake()
        return 0
    if args.messages < 10 or args.rounds < 1:
        parser.error("--messages must be >= 10 and --rounds >= 1")
    if not 1 <= args.concurrency <= 99:
        parser.error("--concurrency must be 1..99")
    if args.send_threads is None:
        import bot.outbox

        args.send_threads = ",".join(str(n) for n in sorted({1, 4, getattr(bot.outbox, "SEND_THREADS", 4)}))
    args.threads_list = [int(t) for t in args.send_threads.split(",") if t.strip()]
    args.targets = ["vereda", "bare"] if args.target == "both" else [args.target]

    from bench import webhook

    def on_alarm(_signum: int, _frame: object) -> None:
        print(f"\n--max-minutes {args.max_minutes:g} reached", file=sys.stderr)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, webhook._on_sigterm)
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(max(1, round(args.max_minutes * 60)))
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if args.part in ("b", "both") and "postgresql" in backends and not webhook.postgres_reachable():
        if args.backend == "postgresql":
            print(f"PostgreSQL at {webhook.POSTGRES_URL} does not answer", file=sys.stderr)
            return 2
        print(f"(skipping postgresql: {webhook.POSTGRES_URL} does not answer)")
        backends.remove("postgresql")
    busy = webhook._machine_busy_seconds()
    time.sleep(1.0)
    args.busy_before = (webhook._machine_busy_seconds() - busy) / (os.cpu_count() or 1)
    if args.busy_before > 0.15:
        print(f"warning: the machine was {100 * args.busy_before:.0f}% busy before the run (other processes); the "
              "figures below are lower and noisier than on a quiet machine")
    ok = True
    levels: list[list[SendRun]] = []
    results: list[WebhookResult] = []
    fake: FakeProcess | None = None
    try:
        fake = FakeProcess(args.api_delay_ms)
        if args.part in ("a", "both"):
            levels = bench_sends(args, fake)
        if args.part in ("b", "both"):
            for backend in backends:
                results.extend(bench_webhook_backend(backend, args, fake))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
        if fake is not None:
            fake.stop()
        webhook._stop_all()
    if levels:
        ok &= report_sends(levels, args)
    if results:
        ok &= report_webhook(results, args)
    if args.json:
        args.json.write_text(json.dumps({
            "sends": [{"threads": r.threads, "mode": r.mode, "messages": r.messages, "seconds": r.seconds,
                       "msg_per_s": r.rate, "errors": r.errors, "client_cpu_s": r.client_cpu, "fake_cpu_s": r.fake_cpu}
                      for runs in levels for r in runs],
            "webhook": [{"backend": r.backend, "target": r.target, "requests": r.phase.count,
                         "seconds": r.phase.elapsed, "rps": r.phase.count / r.phase.elapsed if r.phase.elapsed else 0,
                         "p50_ms": r.phase.percentile(0.5), "p99_ms": r.phase.percentile(0.99),
                         "errors": r.phase.errors, "statuses": dict(r.phase.statuses), "calls": dict(r.calls),
                         "server_cpu_s": r.phase.server_cpu, "fake_cpu_s": r.phase.fake_cpu,
                         "kinds": dict(r.phase.kinds)} for r in results],
        }, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
