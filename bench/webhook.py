"""Webhook throughput and latency: Vereda under gunicorn against a bare Flask app under the same settings.

    python bench/webhook.py [--backend sqlite|postgresql|both] [--seconds 15] [--concurrency 20]

For each backend it starts, one after the other, the real app (`gunicorn 'app:create_app()'`, a fresh SQLite file
or a fresh PostgreSQL schema, the repository's lessons, a FakeTwilio in this process as TWILIO_API_BASE_URL) and
bench/bare_app.py (one POST route answering an empty <Response/>), with the same gunicorn settings (default
`-w 2 --threads 4`, gthread workers). Simulated learners, one phone number each, post signed Twilio webhooks over
keep-alive connections (closed loop, or open loop with --rate): first a warm-up (not measured), then N measured
seconds. It prints req/s, p50/p99 latency, errors (any non-200 or failed request), the CPU of the app, the
database, this process and the rest of the machine, the Vereda/bare throughput ratio against the goals
(ratio >= 0.5, p99 < 100 ms), how many replies the dispatchers delivered to the fake Twilio and how long after
the webhook answered. Only 127.0.0.1 is contacted; every process started here is stopped on exit, Ctrl-C and
SIGTERM included. bench/README.md has the choices made and the figures measured.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench import _data  # noqa: E402
from tests.fakes.twilio_api import FakeTwilio  # noqa: E402

# api.twilio.com keeps connections alive; the fake's handler (http.server's default HTTP/1.0) would make every
# send open a new TCP connection, a cost production does not have. Its answers always carry Content-Length,
# so HTTP/1.1 keep-alive is safe (with TCP_NODELAY, else every answer waits for a delayed ACK). This only
# affects http.server handlers in this process (the fake's).
http.server.BaseHTTPRequestHandler.protocol_version = "HTTP/1.1"
http.server.BaseHTTPRequestHandler.disable_nagle_algorithm = True  # headers and body are two writes

POSTGRES_URL = os.environ.get("VEREDA_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PATH = "/webhooks/twilio"
OUR_NUMBER = "+15005550006"
GOAL_RATIO = 0.5
GOAL_P99_MS = 100.0

# What one simulated learner writes, in order, before a new learner (a new phone number) takes its place.
# Course 2 (seguridad-humana) has a 3-question quiz per lesson; course 1 (ruta-segura) has no quiz.
QUIZ_SCRIPT = [("new", "hola"), ("menu", "2"), ("answer", "1"), ("answer", "2"), ("answer", "b"),
               ("keyword", "SIGUIENTE"), ("answer", "3"), ("answer", "a"), ("answer", "2"),
               ("keyword", "ESTADO"), ("keyword", "AYUDA")]
READER_SCRIPT = [("new", "hola"), ("menu", "1"), ("keyword", "SIGUIENTE"), ("keyword", "ESTADO"),
                 ("keyword", "SIGUIENTE"), ("keyword", "AYUDA")]


class TimedList(list):  # type: ignore[type-arg]
    """FakeTwilio's message list, noting when each message arrived (monotonic seconds, by Twilio sid)."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    def append(self, sent: object) -> None:
        self.arrived[sent.sid] = time.monotonic()  # type: ignore[attr-defined]
        super().append(sent)


# -- processes ------------------------------------------------------------------------------------------------
# Child processes in their own process groups, stopped gently then killed: bench/_data.py's, shared by every
# benchmark (bench/telegram.py reaches them through this module's names).
_children = _data._children
_stop, _stop_all, _on_sigterm = _data.stop, _data.stop_all, _data.on_sigterm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker_pids(master: int) -> list[int]:
    """The gunicorn workers: the master's child processes."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(raw[raw.rindex(")") + 2:].split()[1]) == master:
                pids.append(int(entry))
    return sorted(pids)


def _py_spy(args: argparse.Namespace, backend: str, target: str, workers: list[int]) -> list[subprocess.Popen[bytes]]:
    """With --py-spy DIR: sample each worker for the measured seconds into DIR (collapsed stacks, one file each)."""
    if args.py_spy is None:
        return []
    args.py_spy.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for n, pid in enumerate(workers):
        out = args.py_spy / f"{backend}-{target}-worker{n}.txt"
        command = [binary, "record", "-p", str(pid), "-d", str(max(1, round(args.seconds))), "-r", "100",
                   "-f", "raw", "-o", str(out), "--nonblocking"]
        if getattr(args, "py_spy_idle", False):
            command.append("--idle")
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    for proc in procs:
        _children.append(proc)
    return procs


def _machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _postgres_cpu_seconds() -> float:
    """utime+stime of the local PostgreSQL server processes (the database's share of the machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if raw[raw.index("(") + 1:raw.rindex(")")] == "postgres":
                fields = raw[raw.rindex(")") + 2:].split()
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _tree_cpu_seconds(root_pid: int) -> float:
    """utime+stime of a process and its children (gunicorn master and workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = {root_pid}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        stats[int(entry)] = raw[raw.rindex(")") + 2:].split()
    for pid, fields in stats.items():
        if int(fields[1]) == root_pid:  # field 4 (ppid), counted after the comm
            pids.add(pid)
    for pid in pids:
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / tick  # utime, stime
    return total


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_gunicorn(name: str, app_spec: str, cwd: Path, env: dict[str, str], port: int, workers: int,
                   threads: int, workdir: Path, ready_path: str, ready_method: str) -> Server:
    log = workdir / f"gunicorn-{name}.log"
    command = [str(Path(sys.executable).with_name("gunicorn")), "-w", str(workers), "--threads", str(threads),
               "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--error-logfile", str(log), app_spec]
    if not Path(command[0]).exists():
        command[0:1] = [sys.executable, "-m", "gunicorn"]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _children.append(proc)
    server = Server(name, proc, port, log)
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if client.request(ready_method, server.base_url + ready_path).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    _stop(proc)
    raise RuntimeError(f"{name}: gunicorn did not become ready on port {port}\n{server.log_tail()}")


# -- load -------------------------------------------------------------------------------------------------------
@dataclass
class Learner:
    """One simulated person per sender thread; moves to a fresh phone number after its script."""

    index: int
    generation: int = 0
    step: int = 0

    @property
    def script(self) -> list[tuple[str, str]]:
        return READER_SCRIPT if self.index % 4 == 3 else QUIZ_SCRIPT

    @property
    def phone(self) -> str:
        return f"+5255{self.index:02d}{self.generation:06d}"  # Mexico City, 10 national digits

    def next_message(self) -> tuple[str, str]:
        kind, body = self.script[self.step]
        self.step += 1
        if self.step == len(self.script):
            self.step, self.generation = 0, self.generation + 1
        return kind, body


def sms_form(sender: str, body: str) -> dict[str, str]:
    """The form Twilio posts for an inbound SMS (as tests/conftest.py's sms_form), with a new MessageSid."""
    sid = "SM" + uuid.uuid4().hex
    return {
        "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0", "ToCity": "",
        "FromZip": "", "SmsSid": sid, "FromState": "", "SmsStatus": "received", "FromCity": "",
        "Body": body, "FromCountry": "MX", "To": OUR_NUMBER, "ToZip": "", "NumSegments": "1",
        "MessageSid": sid, "AccountSid": "AC" + "0" * 32, "From": sender, "ApiVersion": "2010-04-01",
    }


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (nan when there are none)."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    samples: dict[int, str] = field(default_factory=dict)  # one error body per status
    answered: dict[str, float] = field(default_factory=dict)  # MessageSid -> monotonic time of the 200
    elapsed: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    db_cpu: float = 0.0  # PostgreSQL server processes (the whole local server: run nothing else meanwhile)
    machine_cpu: float = 0.0  # every core, every process

    @property
    def count(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        return self.count - self.statuses.get(200, 0)

    def percentile(self, q: float) -> float:
        """Latency quantile `q` in milliseconds."""
        return percentile(sorted(self.latencies), q) * 1000


class Crowd:
    """`concurrency` learners, each with its own keep-alive connection, posting as fast as answered."""

    def __init__(self, concurrency: int, auth_token: str, public_base_url: str) -> None:
        self.learners = [Learner(i) for i in range(concurrency)]
        self.validator = RequestValidator(auth_token)
        self.url = public_base_url + PATH
        self.stop = threading.Event()
        self.clients: dict[int, httpx.Client] = {}

    def client_for(self, learner: Learner, server: Server) -> httpx.Client:
        """The learner's own keep-alive connection, kept from the warm-up into the measurement."""
        client = self.clients.get(learner.index)
        if client is None:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            client = httpx.Client(base_url=server.base_url, timeout=10.0, limits=limits, trust_env=False)
            self.clients[learner.index] = client
        return client

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def run(self, server: Server, seconds: float, rate: float = 0.0) -> Phase:
        """Post for `seconds`: as fast as answered, or (rate > 0) open-loop at `rate` requests/s in all, each
        latency then counted from the request's scheduled time, so a late answer also delays the next."""
        phase = Phase()
        lock = threading.Lock()
        window: dict[str, float] = {}

        def begin() -> None:  # run once, as all senders and this thread pass the barrier
            window["cpu0"], window["client0"] = _tree_cpu_seconds(server.proc.pid), time.process_time()
            window["db0"], window["busy0"] = _postgres_cpu_seconds(), _machine_busy_seconds()
            window["t0"] = time.monotonic()
            window["deadline"] = window["t0"] + seconds

        barrier = threading.Barrier(len(self.learners) + 1, action=begin)

        def one(learner: Learner) -> None:
            latencies: list[float] = []
            statuses: Counter[int] = Counter()
            kinds: Counter[str] = Counter()
            samples: dict[int, str] = {}
            answered: dict[str, float] = {}
            client = self.client_for(learner, server)
            barrier.wait()
            interval = len(self.learners) / rate if rate > 0 else 0.0
            due = window["t0"] + interval * learner.index / len(self.learners)
            while not self.stop.is_set() and time.monotonic() < window["deadline"]:
                kind, body = learner.next_message()
                form = sms_form(learner.phone, body)
                signature = self.validator.compute_signature(self.url, form)
                if interval:
                    if due >= window["deadline"]:
                        break
                    time.sleep(max(0.0, due - time.monotonic()))
                    started = time.perf_counter() - max(0.0, time.monotonic() - due)
                    due += interval
                else:
                    started = time.perf_counter()
                try:
                    response = client.post(PATH, data=form, headers={"X-Twilio-Signature": signature})
                    status = response.status_code
                    text = response.text
                except httpx.HTTPError as error:
                    status, text = 0, f"{type(error).__name__}: {error}"
                latencies.append(time.perf_counter() - started)
                if status == 200:
                    answered[form["MessageSid"]] = time.monotonic()
                statuses[status] += 1
                kinds[kind] += 1
                if status != 200 and status not in samples:
                    samples[status] = text[:200]
            with lock:
                phase.latencies.extend(latencies)
                phase.statuses.update(statuses)
                phase.kinds.update(kinds)
                phase.answered.update(answered)
                for status, text in samples.items():
                    phase.samples.setdefault(status, text)

        threads = [threading.Thread(target=one, args=(learner,), daemon=True) for learner in self.learners]
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
        return phase


# -- one backend ------------------------------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    target: str
    phase: Phase
    note: str = ""
    delivered: dict[str, int] = field(default_factory=dict)
    reply_lags: list[float] = field(default_factory=list)  # seconds, webhook answered -> fake Twilio got it
    drain_cpu: float = 0.0  # app CPU seconds spent while only the dispatchers worked, after the load


def _database(backend: str, workdir: Path) -> tuple[str, str | None]:
    """(DATABASE_URL, PostgreSQL schema to drop afterwards)."""
    if backend == "sqlite":
        return f"sqlite:///{workdir / 'vereda.db'}", None
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    admin.dispose()
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", schema


def _migrate(database_url: str) -> None:
    """Create the schema before gunicorn starts: its workers each migrate at boot, and on an empty PostgreSQL
    schema two of them racing through `CREATE TABLE alembic_version` makes one fail to boot (see README)."""
    from bot.db import make_engine, migrate

    engine = make_engine(database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()


def _drop_schema(schema: str) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


def _outbox_counts(database_url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT status, COUNT(*) FROM outbound_messages GROUP BY status"))
            return {str(status): int(count) for status, count in rows}
    finally:
        engine.dispose()


def postgres_reachable() -> bool:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def bench_backend(backend: str, args: argparse.Namespace) -> list[Result]:
    results: list[Result] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"vereda-bench-{backend}-"))
    arrivals = TimedList()
    fake = FakeTwilio(messages=arrivals).start()
    assert fake.server is not None
    # Workers stopped at the end of a run drop their keep-alive connections: not worth a traceback.
    fake.server.handle_error = lambda *_args: None  # type: ignore[method-assign]
    schema: str | None = None
    try:
        database_url, schema = _database(backend, workdir)
        if not args.race_migrations:
            _migrate(database_url)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELEGRAM_", "VEREDA_"))}
        for target in args.targets:
            port = free_port()
            public = f"http://127.0.0.1:{port}"
            env = dict(base_env, PYTHONUNBUFFERED="1")
            if target == "vereda":
                env.update(
                    DATABASE_URL=database_url, LESSONS_DIR=str(ROOT / "lessons"),
                    TWILIO_ACCOUNT_SID=fake.account_sid, TWILIO_AUTH_TOKEN=fake.auth_token,
                    TWILIO_SMS_FROM=OUR_NUMBER, TWILIO_API_BASE_URL=fake.base_url, PUBLIC_BASE_URL=public,
                    VEREDA_SCHEDULER="off", RATE_LIMITS="off", LOG_LEVEL="WARNING",
                )
                server = start_gunicorn(target, "app:create_app()", ROOT, env, port, args.workers, args.threads,
                                        workdir, "/healthz", "GET")
            else:
                server = start_gunicorn(target, "bare_app:create_app()", BENCH, env, port, args.workers,
                                        args.threads, workdir, PATH, "POST")
            crowd = Crowd(args.concurrency, fake.auth_token, public)
            try:
                print(f"  {backend:<10} {target:<6} port {port}: warm-up {args.warmup:g} s …", flush=True)
                crowd.run(server, args.warmup, args.rate)
                workers = _worker_pids(server.proc.pid)
                if server.proc.poll() is not None or len(workers) != args.workers:
                    raise RuntimeError(f"{backend} {target}: gunicorn has {len(workers)} of {args.workers} workers "
                                       f"after the warm-up (exit code {server.proc.poll()})\n{server.log_tail()}")
                with fake.lock:
                    before = len(fake.messages)
                print(f"  {backend:<10} {target:<6} measuring {args.seconds:g} s …", flush=True)
                spy = _py_spy(args, backend, target, workers)
                phase = crowd.run(server, args.seconds, args.rate)
                for proc in spy:
                    proc.wait(30)
                result = Result(backend, target, phase)
                if target == "vereda":
                    with fake.lock:
                        during = len(fake.messages) - before
                    cpu0 = _tree_cpu_seconds(server.proc.pid)
                    drained_in = _wait_for_drain(fake, database_url, args.drain)
                    drain_cpu = _tree_cpu_seconds(server.proc.pid) - cpu0
                    with fake.lock:
                        total = len(fake.messages)
                    result.delivered = {"during": during, "total": total, **_outbox_counts(database_url)}
                    result.delivered["drained_in_ms"] = drained_in
                    # After the load: only the dispatchers work, so their CPU per message shows.
                    result.delivered["after"] = total - before - during
                    result.drain_cpu = drain_cpu
                    result.reply_lags = _reply_lags(database_url, phase, arrivals.arrived)
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
                _stop(server.proc)
    finally:
        fake.stop()
        if schema is not None:
            _drop_schema(schema)
        if args.keep_workdir:
            print(f"  (kept {workdir} for its gunicorn logs)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def _reply_lags(database_url: str, phase: Phase, arrived: dict[str, float]) -> list[float]:
    """For each reply to a measured inbound message: seconds from the webhook's 200 to the fake's receipt."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            inbound: dict[int, str] = {
                int(row_id): str(sid) for row_id, sid in connection.execute(
                    text("SELECT id, provider_id FROM inbound_messages"))
            }
            outbound = connection.execute(text(
                "SELECT idempotency_key, provider_id FROM outbound_messages WHERE idempotency_key LIKE 'in:%'"
            )).all()
    finally:
        engine.dispose()
    lags = []
    for key, provider_id in outbound:
        sid = inbound.get(int(key.split(":")[1]))
        if sid in phase.answered:
            got = arrived.get(provider_id or "")
            lags.append(float("inf") if got is None else got - phase.answered[sid])
    return lags


def _wait_for_drain(fake: FakeTwilio, database_url: str, seconds: float) -> int:
    """Milliseconds until no outbox row is queued or sending any more (-1: still some after `seconds`)."""
    started = time.monotonic()
    while True:
        counts = _outbox_counts(database_url)
        if not counts.get("queued") and not counts.get("sending"):
            return round((time.monotonic() - started) * 1000)
        if time.monotonic() - started > seconds:
            return -1
        time.sleep(0.1)


# -- report -----------------------------------------------------------------------------------------------------
def report(results: list[Result], args: argparse.Namespace) -> bool:
    print()
    load = f"open loop at {args.rate:g} req/s" if args.rate > 0 else "closed loop (next message when answered)"
    print(f"gunicorn -w {args.workers} --threads {args.threads} (gthread); {args.concurrency} concurrent learners, "
          f"keep-alive, {load}; warm-up {args.warmup:g} s, measured {args.seconds:g} s; {os.cpu_count()} CPU(s) "
          f"shared by server, database, load generator and fake Twilio (machine {100 * args.busy_before:.0f}% busy "
          f"before the run)")
    header = (f"{'backend':<11}{'target':<8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'requests':>10}"
              f"{'app CPU':>9}{'db CPU':>8}{'gen CPU':>9}{'other':>7}{'app+db ms/req':>15}")
    print(header)
    print("-" * len(header))
    ok = True
    by_backend: dict[str, dict[str, Result]] = {}
    for r in results:
        p = r.phase
        rate = p.count / p.elapsed if p.elapsed else 0.0
        def share(seconds: float, elapsed: float = p.elapsed) -> float:
            return 100 * seconds / elapsed if elapsed else 0.0

        db = p.db_cpu if r.backend == "postgresql" else 0.0
        per = 1000 * (p.server_cpu + db) / p.count if p.count else 0.0
        other = p.machine_cpu - p.server_cpu - db - p.client_cpu
        print(f"{r.backend:<11}{r.target:<8}{rate:>9.1f}{p.percentile(0.50):>9.1f}{p.percentile(0.99):>9.1f}"
              f"{p.errors:>8}{p.count:>10}{share(p.server_cpu):>8.0f}%{share(db):>7.0f}%{share(p.client_cpu):>8.0f}%"
              f"{share(other):>6.0f}%{per:>15.2f}" + (f"  {r.note}" if r.note else ""))
        by_backend.setdefault(r.backend, {})[r.target] = r
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
            verdict = "PASS" if ratio >= GOAL_RATIO else "MISS"
            ok &= ratio >= GOAL_RATIO
            print(f"{backend}: throughput vereda/bare = {v_rate:.1f}/{b_rate:.1f} = {ratio:.2f}   "
                  f"goal >= {GOAL_RATIO}: {verdict}")
        p99 = v.percentile(0.99)
        verdict = "PASS" if p99 < GOAL_P99_MS else "MISS"
        ok &= p99 < GOAL_P99_MS
        print(f"{backend}: vereda p99 = {p99:.1f} ms   goal < {GOAL_P99_MS:g} ms: {verdict}")
        if v.errors:
            ok = False
            print(f"{backend}: vereda errors {v.errors}: " + ", ".join(
                f"{s or 'no answer'}×{n}" for s, n in sorted(v.statuses.items()) if s != 200))
            for status, text in v.samples.items():
                print(f"    {status or 'no answer'}: {text!r}")
        d = vereda.delivered
        if d:
            outbox = ", ".join(f"{k} {n}" for k, n in sorted(d.items())
                               if k not in {"during", "total", "drained_in_ms", "after"})
            drained = (f"outbox empty {d['drained_in_ms']} ms after the load stopped" if d["drained_in_ms"] >= 0
                       else f"outbox NOT empty {args.drain:g} s after the load stopped")
            print(f"{backend}: fake Twilio received {d['during']} messages during the measured "
                  f"{v.elapsed:.0f} s ({d['during'] / v.elapsed:.1f}/s), {d['total']} in all (warm-up included); "
                  f"outbox rows: {outbox}; {drained}")
            if d["after"] >= 50:
                print(f"{backend}: dispatchers alone (after the load): {d['after']} messages, "
                      f"{1000 * vereda.drain_cpu / d['after']:.1f} ms app CPU per message")
        if vereda.reply_lags:
            lags = sorted(vereda.reply_lags)
            within = sum(1 for lag in lags if lag <= 1.0)
            def ms(q: float, lags: list[float] = lags) -> str:
                value = percentile(lags, q)
                return f"{value * 1000:.0f} ms" if value != float("inf") else "not delivered"

            print(f"{backend}: reply delay (webhook answered -> fake Twilio received), {len(lags)} replies to measured "
                  f"messages: p50 {ms(0.5)}, p99 {ms(0.99)}, max {ms(1.0)}; within 1 s: "
                  f"{100 * within / len(lags):.0f}%")
        mix = ", ".join(f"{k} {100 * n / v.count:.0f}%" for k, n in v.kinds.most_common())
        print(f"{backend}: message mix: {mix}")
    for r in results:
        if r.target == "bare" and r.phase.errors:
            ok = False
            print(f"{r.backend}: bare errors {r.phase.errors}: {dict(r.phase.statuses)} {r.phase.samples}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per target (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first (default 3)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent learners (default 20)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: this many requests/s in all, spread over the learners (default 0: each "
                             "learner sends its next message as soon as the last is answered)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn -w (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn --threads (default 4)")
    parser.add_argument("--drain", type=float, default=30.0, help="max seconds to wait for the outbox to empty")
    parser.add_argument("--target", choices=["both", "vereda", "bare"], default="both")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir with gunicorn logs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--py-spy", type=Path, metavar="DIR",
                        help="profile each worker with py-spy during the measurement (collapsed stacks in DIR; "
                             "the sampling costs CPU, so the figures of such a run are lower)")
    parser.add_argument("--py-spy-idle", action="store_true",
                        help="with --py-spy: sample waiting threads too (wall time, shows lock waits)")
    parser.add_argument("--race-migrations", action="store_true",
                        help="do not create the schema first: let the gunicorn workers migrate it at boot")
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 99:
        parser.error("--concurrency must be 1..99")
    args.targets = ["vereda", "bare"] if args.target == "both" else [args.target]
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background

    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    if "postgresql" in backends and not postgres_reachable():
        if args.backend == "postgresql":
            print(f"PostgreSQL at {POSTGRES_URL} does not answer", file=sys.stderr)
            return 2
        print(f"(skipping postgresql: {POSTGRES_URL} does not answer)")
        backends.remove("postgresql")
    busy = _machine_busy_seconds()
    time.sleep(1.0)
    busy = (_machine_busy_seconds() - busy) / (os.cpu_count() or 1)
    args.busy_before = busy
    if busy > 0.15:
        print(f"warning: the machine was {100 * busy:.0f}% busy before the run (other processes); the figures "
              "below are lower than on a quiet machine (see the 'other' column)")
    results: list[Result] = []
    try:
        for backend in backends:
            results.extend(bench_backend(backend, args))
    except KeyboardInterrupt:
        print("\ninterrupted: stopping servers", file=sys.stderr)
        _stop_all()
        return 130
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        _stop_all()
    ok = report(results, args)
    if args.json:
        args.json.write_text(json.dumps([{
            "backend": r.backend, "target": r.target, "requests": r.phase.count, "seconds": r.phase.elapsed,
            "rps": r.phase.count / r.phase.elapsed if r.phase.elapsed else 0.0,
            "p50_ms": r.phase.percentile(0.5), "p99_ms": r.phase.percentile(0.99), "errors": r.phase.errors,
            "statuses": dict(r.phase.statuses), "server_cpu_s": r.phase.server_cpu,
            "client_cpu_s": r.phase.client_cpu, "db_cpu_s": r.phase.db_cpu, "machine_cpu_s": r.phase.machine_cpu,
            "delivered": r.delivered,
        } for r in results], indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
