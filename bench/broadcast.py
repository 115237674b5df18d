"""Broadcast materialisation: `bot.broadcasts.materialise` of a 100,000-recipient broadcast, time and memory.

    python bench/broadcast.py [--backend sqlite|postgresql|both] [--n 100000] [--max-seconds 600]

For each backend, in a fresh database (a SQLite file in a temporary folder, or a new PostgreSQL schema dropped
afterwards): n learners (half es, half en) with an SMS address each, made with bulk INSERT … SELECT, and one
broadcast to everyone (`bot.broadcasts.create`, send time now). A separate process builds the runtime, then runs
`materialise` as the scheduler would and reports its wall time and its peak resident memory
(resource.getrusage ru_maxrss, the whole process: interpreter, SQLAlchemy, the catalog and all); a second
broadcast is then materialised under tracemalloc to show the Python allocations' own peak. Goals: under 10 s and
under 300 MB. It checks that every recipient got exactly one outbox row and the broadcast is released.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from datetime import UTC, datetime
from datetime import time as clock
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _data  # noqa: E402

GOAL_SECONDS = 10.0
GOAL_MB = 300.0
QUIET = (clock(0, 0), clock(0, 0))  # no quiet hours: every message is due now (quiet hours only delay them)


def child(url: str, max_seconds: float) -> None:
    """Build the runtime, create a broadcast, materialise it (timed), then once more under tracemalloc."""
    import os
    import threading
    import tracemalloc

    from bot.broadcasts import create, materialise
    from bot.runtime import build

    timer = threading.Timer(max_seconds, lambda: (print(json.dumps({"error": "timeout"}), flush=True), os._exit(2)))
    timer.daemon = True
    timer.start()
    runtime = build(_data.settings_for(url))
    text = {"es": "Hola: mañana no hay clase por el día festivo. ¡Nos vemos el lunes!",
            "en": "Hi: no lesson tomorrow, it is a holiday. See you on Monday!"}
    now = datetime.now(UTC)
    broadcast_id = create(runtime.factory, text, {}, now, runtime.catalog, now, created_by="bench")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    added = materialise(runtime.factory, broadcast_id, runtime.senders, now, QUIET)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    second = create(runtime.factory, text, {}, now, runtime.catalog, now, created_by="bench")
    tracemalloc.start()
    materialise(runtime.factory, second, runtime.senders, now, QUIET)
    _current, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(json.dumps({"broadcast": broadcast_id, "added": added, "seconds": seconds, "rss_before_mb": before,
                      "rss_peak_mb": peak, "traced_peak_mb": traced / 2**20}), flush=True)
    runtime.engine.dispose()


def bench(backend: str, n: int, max_seconds: float) -> list[str]:
    import subprocess

    from sqlalchemy import create_engine

    now = datetime.now(UTC).replace(microsecond=0)
    with _data.database(backend) as url:
        from bot.db import migrate

        engine = create_engine(url)
        migrate(engine)
        with _data.Timer() as seeding:
            _data.seed_learners(engine, n, now)
            _data.analyse(engine)
        print(f"[{backend}] seeded {n} learners with an SMS address each in {seeding.seconds:.1f} s", flush=True)
        proc = _data.spawn([sys.executable, __file__, "--child", url, str(max_seconds)], stdout=subprocess.PIPE)
        try:
            out, _err = proc.communicate(timeout=max_seconds * 2 + 60)
        finally:
            _data.stop(proc)
        result = json.loads(out.strip().splitlines()[-1])
        if "error" in result:
            raise SystemExit(f"[{backend}] materialise did not finish in {max_seconds} s")
        mine = "FROM outbound_messages WHERE broadcast_id = :b"
        rows = _data.count(engine, f"SELECT count(*) {mine}", b=result["broadcast"])
        people = _data.count(engine, f"SELECT count(DISTINCT learner_id) {mine}", b=result["broadcast"])
        released = _data.count(engine, "SELECT count(*) FROM broadcasts WHERE id = :b AND state = 'released' "
                               "AND recipients = :n", b=result["broadcast"], n=n)
        engine.dispose()
    print(f"[{backend}] materialised {result['added']} rows in {result['seconds']:.2f} s, peak RSS "
          f"{result['rss_peak_mb']:.0f} MB (before: {result['rss_before_mb']:.0f} MB), tracemalloc peak "
          f"{result['traced_peak_mb']:.1f} MB", flush=True)
    ok = rows == n and people == n and released == 1
    return [backend, f"{n:,}", f"{rows:,}", f"{result['seconds']:.2f}", f"{n / result['seconds']:,.0f}",
            f"{result['rss_before_mb']:.0f}", f"{result['rss_peak_mb']:.0f}", f"{result['traced_peak_mb']:.1f}",
            f"< {GOAL_SECONDS:.0f} s, < {GOAL_MB:.0f} MB",
            _data.verdict(result["seconds"] < GOAL_SECONDS and result["rss_peak_mb"] < GOAL_MB and ok),
            "one row each, released" if ok else f"CHECK FAILED: {rows} rows, {people} learners, released={released}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--n", type=int, default=100_000, help="recipients (default 100000)")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="give up on one materialise after this")
    parser.add_argument("--child", nargs=2, metavar=("URL", "MAX_SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], float(args.child[1]))
        return
    _data.install_cleanup()
    rows = []
    try:
        for backend in _data.backends(args.backend):
            rows.append(bench(backend, args.n, args.max_seconds))
    finally:
        _data.stop_all()
    print()
    print("(c) materialising one broadcast: seconds and peak memory of the process that runs materialise")
    print(_data.table(["backend", "recipients", "outbox rows", "seconds", "rows/s", "RSS before MB", "RSS peak MB",
                       "tracemalloc peak MB", "goal", "result", "checks"], rows))


if __name__ == "__main__":
    main()
