"""Outbox dispatch: messages/s that `Outbox.dispatch` sends to a local fake Twilio, with 1 and with 3 workers.

    python bench/dispatch.py [--backend sqlite|postgresql|both] [--n 20000] [--workers 1,3] [--fakes 0]
                             [--max-seconds 120] [--ceiling-seconds 5]
    python bench/dispatch.py --sends 1000   # only: CPU per send, SDK over requests vs over urllib3, one process

First the fake's own ceiling: FakeTwilio (tests/fakes/twilio_api.py) in its own process, answering raw keep-alive
POSTs of a Messages.json form from 3 client processes (no Vereda, no database), for a few seconds.

Then for each backend and each worker count W: a fresh database (a SQLite file in a temporary folder, or a new
PostgreSQL schema dropped afterwards) with n queued SMS lessons (bulk INSERT … SELECT, spread over 1,000 learners),
the fake Twilio in separate processes (`--fakes`, default one per worker, each worker talking to its own), and W
worker processes, each building Vereda's runtime (`bot.runtime.build`, RATE_LIMITS off, real TwilioSender pointed
at its fake) and calling `runtime.outbox.dispatch(utcnow)` until a pass finds nothing due — what `vereda worker`'s
dispatcher thread does, without the scheduler's other work. Timed from a common start signal to the last worker's
end; it checks every row is `sent` and the fakes received each message once. Goal: 1,000 messages/s with 3
workers on PostgreSQL. Only 127.0.0.1 is contacted; every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data  # noqa: E402

GOAL_RATE = 1000.0
GOAL_WORKERS = 3


def _cpu() -> float:
    """CPU seconds (user + system) this process has used so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the fake, in its own process ------------------------------------------------------------------------------------
def fake_main() -> None:
    """Run FakeTwilio until stdin closes; print its URL first and the number of messages it accepted last."""
    import http.server

    # api.twilio.com keeps connections alive; the fake's handler (http.server's default HTTP/1.0) would close every
    # connection, a cost production does not have. Its answers always carry Content-Length, so HTTP/1.1 is safe.
    http.server.BaseHTTPRequestHandler.protocol_version = "HTTP/1.1"
    http.server.BaseHTTPRequestHandler.disable_nagle_algorithm = True

    from tests.fakes.twilio_api import FakeTwilio

    fake = FakeTwilio(account_sid=_data.ACCOUNT_SID, auth_token=_data.AUTH_TOKEN).start()
    print(fake.base_url, flush=True)
    sys.stdin.read()
    with fake.lock:
        accepted = len(fake.messages)
        distinct = len({(m.to, m.body) for m in fake.messages})
    print(json.dumps({"accepted": accepted, "requests": fake.requests, "distinct": distinct, "cpu": _cpu()}),
          flush=True)
    fake.stop()


def start_fakes(count: int) -> list[tuple[subprocess.Popen[str], str]]:
    fakes = []
    for _ in range(count):
        proc = _data.spawn([sys.executable, __file__, "--fake"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        fakes.append((proc, proc.stdout.readline().strip()))
    return fakes


def stop_fakes(fakes: list[tuple[subprocess.Popen[str], str]]) -> list[dict[str, int]]:
    results = []
    for proc, _url in fakes:
        out, _err = proc.communicate(timeout=30)
        results.append(json.loads(out.strip().splitlines()[-1]))
        _data.stop(proc)
    return results


# -- the fake's ceiling: raw requests ------------------------------------------------------------------------------
def client_main(base_url: str, seconds: float, connections: int) -> None:
    """POST a Messages.json form over keep-alive connections for `seconds`; print how many got 201."""
    parts = urlsplit(base_url)
    path = f"/2010-04-01/Accounts/{_data.ACCOUNT_SID}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{_data.ACCOUNT_SID}:{_data.AUTH_TOKEN}".encode()).decode()
    counts = [0] * connections
    errors = [0] * connections
    deadline = time.monotonic() + seconds

    def loop(slot: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = urlencode({"To": f"+1555{slot:03d}{n:07d}", "From": _data.SMS_FROM,
                              "Body": "Lección de prueba: " + "x" * 120})
            connection.request("POST", path, body, {"Authorization": auth,
                                                    "Content-Type": "application/x-www-form-urlencoded"})
            response = connection.getresponse()
            response.read()
            if response.status == 201:
                counts[slot] += 1
            else:
                errors[slot] += 1
        connection.close()

    threads = [threading.Thread(target=loop, args=(slot,)) for slot in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({"ok": sum(counts), "errors": sum(errors)}), flush=True)


def ceiling(seconds: float, clients: int = 3, connections: int = 2) -> list[str]:
    fakes = start_fakes(1)
    procs = [_data.spawn([sys.executable, __file__, "--client", fakes[0][1], str(seconds), str(connections)],
                         stdout=subprocess.PIPE) for _ in range(clients)]
    results = []
    for proc in procs:
        out, _err = proc.communicate(timeout=seconds + 60)
        results.append(json.loads(out.strip().splitlines()[-1]))
        _data.stop(proc)
    accepted = stop_fakes(fakes)[0]["accepted"]
    ok = sum(r["ok"] for r in results)
    errors = sum(r["errors"] for r in results)
    print(f"fake ceiling: {ok} accepted in {seconds:.0f} s ({ok / seconds:,.0f} req/s), {errors} errors, "
          f"the fake counted {accepted}", flush=True)
    return ["fake only (raw requests)", "-", f"{clients}x{connections} conn", f"{ok:,}", f"{seconds:.1f}",
            f"{ok / seconds:,.0f}", "-", "-", "-", "-", f"{errors} errors"]


# -- one process: CPU per send of the Twilio transports --------------------------------------------------------------
def transports(sends: int) -> list[str]:
    """CPU per `TwilioSender.send` in this process, `sends` each, with the SDK's own `requests` transport (as
    before: proxy lookup once, keep-alive session) and with Vereda's PooledHttpClient (urllib3), to one fake."""
    import requests.utils
    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    from bot.channels.base import Outgoing
    from bot.channels.twilio import TwilioSender

    fakes = start_fakes(1)
    url = fakes[0][1]
    results = {}
    try:
        for name in ("requests (TwilioHttpClient)", "urllib3 (PooledHttpClient)"):
            sender = TwilioSender(_data.settings_for("sqlite://", url))
            if name.startswith("requests"):
                http = TwilioHttpClient(timeout=10.0, proxy=requests.utils.get_environ_proxies(url))
                assert http.session is not None
                http.session.trust_env = False
                sender.client = Client(_data.ACCOUNT_SID, _data.AUTH_TOKEN, http_client=http)
                sender.client.api.base_url = url
            messages = [Outgoing(id=i, channel="sms", to_address=f"+1555{i:07d}", from_address=None,
                                 body="Lección de prueba: " + "x" * 120, buttons=()) for i in range(sends + 50)]
            for message in messages[:50]:  # warm up: imports, the connection
                assert sender.send(message).ok
            started, cpu = time.perf_counter(), time.process_time()
            ok = sum(sender.send(message).ok for message in messages[50:])
            results[name] = (ok, time.process_time() - cpu, time.perf_counter() - started)
    finally:
        stop_fakes(fakes)
    rows = []
    for name, (ok, cpu, seconds) in results.items():
        print(f"{name}: {ok}/{sends} sent, CPU {cpu / sends * 1000:.3f} ms per send, "
              f"{sends / seconds:,.0f} sends/s in one thread", flush=True)
        rows.append([name, f"{ok:,}", f"{cpu / sends * 1000:.3f}", f"{sends / seconds:,.0f}"])
    return rows


# -- a Vereda worker -----------------------------------------------------------------------------------------------
def worker_main(url: str, twilio_url: str, max_seconds: float) -> None:
    """Build the runtime, wait for 'go' on stdin, dispatch until nothing is due, print what happened."""
    from bot.dispatcher import utcnow
    from bot.runtime import build

    runtime = build(_data.settings_for(url, twilio_url))
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.perf_counter(), _cpu()
    totals = {"sent": 0, "failed": 0, "retried": 0, "skipped": 0, "passes": 0}
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        done = runtime.outbox.dispatch(utcnow, stop=lambda: time.monotonic() > deadline)
        totals["passes"] += 1
        for name in ("sent", "failed", "retried", "skipped"):
            totals[name] += getattr(done, name)
        if done.total() == 0:
            break
    totals["seconds"] = time.perf_counter() - started  # type: ignore[assignment]
    totals["cpu"] = _cpu() - cpu  # type: ignore[assignment]
    print(json.dumps(totals), flush=True)
    runtime.engine.dispose()


def run(backend: str, n: int, workers: int, fakes_wanted: int, max_seconds: float) -> list[str]:
    from sqlalchemy import create_engine

    from bot.db import migrate

    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
    with _data.database(backend) as url:
        engine = create_engine(url)
        migrate(engine)
        learners = min(n, 1000)
        _data.seed_learners(engine, learners, now)
        _data.seed_outbox(engine, n, now, learners=learners)
        _data.analyse(engine)
        fakes = start_fakes(fakes_wanted or workers)
        procs = []
        try:
            for index in range(workers):
                procs.append(_data.spawn(
                    [sys.executable, __file__, "--worker", url, fakes[index % len(fakes)][1], str(max_seconds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE))
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "a worker did not start"
            with _data.Timer() as timer:
                for proc in procs:
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                results = []
                for proc in procs:
                    out, _err = proc.communicate(timeout=max_seconds + 60)
                    results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                _data.stop(proc)
            received = stop_fakes(fakes)
        sent_rows = _data.count(engine, "SELECT count(*) FROM outbound_messages WHERE status = 'sent'")
        events = _data.count(engine, "SELECT count(*) FROM message_events WHERE status = 'sent'")
        engine.dispose()
    accepted = sum(r["accepted"] for r in received)
    distinct = sum(r["distinct"] for r in received)
    rate = sent_rows / timer.seconds
    ok = sent_rows == n and accepted == n and events == n
    check = "all sent once" if ok else f"CHECK: {sent_rows} sent rows, fake accepted {accepted} ({distinct} distinct)"
    worker_cpu = sum(r["cpu"] for r in results) / max(sent_rows, 1) * 1000
    fake_cpu = sum(r["cpu"] for r in received) / max(sent_rows, 1) * 1000
    print(f"[{backend}] {workers} worker(s), {len(fakes)} fake(s): {sent_rows} sent in {timer.seconds:.2f} s = "
          f"{rate:,.0f} msg/s; per worker {[r['sent'] for r in results]}; CPU per message: workers "
          f"{worker_cpu:.2f} ms, fakes {fake_cpu:.2f} ms; {check}", flush=True)
    goal = workers == GOAL_WORKERS and backend == "postgresql"
    return [backend, str(workers), str(len(fakes)), f"{sent_rows:,}", f"{timer.seconds:.2f}", f"{rate:,.0f}",
            f"{worker_cpu:.2f}", f"{fake_cpu:.2f}", f">= {GOAL_RATE:,.0f}/s" if goal else "-",
            _data.verdict(rate >= GOAL_RATE and ok) if goal else "-", check]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--n", type=int, default=20_000, help="queued messages per run (default 20000)")
    parser.add_argument("--workers", default="1,3", help="worker counts to try, comma-separated")
    parser.add_argument("--fakes", type=int, default=0, help="fake Twilio processes (default: one per worker)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="a worker stops sending after this")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="0 skips the fake's ceiling")
    parser.add_argument("--sends", type=int, default=0,
                        help="only measure CPU per send of the two Twilio transports, this many sends each")
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake:
        return fake_main()
    if args.client:
        return client_main(args.client[0], float(args.client[1]), int(args.client[2]))
    if args.worker:
        return worker_main(args.worker[0], args.worker[1], float(args.worker[2]))
    _data.install_cleanup()
    if args.sends:
        try:
            rows = transports(args.sends)
        finally:
            _data.stop_all()
        print()
        print(_data.table(["transport", "sent", "CPU ms/send", "sends/s (1 thread)"], rows))
        return None
    rows = []
    try:
        if args.ceiling_seconds > 0:
            rows.append(ceiling(args.ceiling_seconds))
        for backend in _data.backends(args.backend):
            for workers in (int(w) for w in args.workers.split(",")):
                rows.append(run(backend, args.n, workers, args.fakes, args.max_seconds))
    finally:
        _data.stop_all()
    print()
    print("(b) dispatching queued SMS to a local fake Twilio, RATE_LIMITS off")
    print(_data.table(["backend", "workers", "fakes", "messages", "seconds", "messages/s", "worker CPU ms/msg",
                       "fake CPU ms/msg", "goal", "result", "checks"], rows))


if __name__ == "__main__":
    main()
