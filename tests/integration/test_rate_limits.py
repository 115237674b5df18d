"""Per-sender rate limits (RATE_LIMITS) in wall time, through real dispatch loops and the fake Twilio, on SQLite
and PostgreSQL: bursts, SMS segments, several processes sharing one database, replies first, and `off`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from bot.channels.base import Outgoing, Rendered, SendResult
from bot.config import DEFAULT_RATE_LIMITS, Settings
from bot.models import OutboundMessage
from bot.outbox import Outbox, enqueue
from bot.ratelimit import RateLimiter, cost
from bot.runtime import Runtime
from bot.sms import analyse
from scheduler import tick
from tests.fakes.twilio_api import FakeTwilio

ONE_SEGMENT = "Aviso: taller el lunes a las 10:00."
THREE_SEGMENTS = ("Aviso importante para todas las personas del albergue. " * 8).strip()  # GSM-7, 3 segments


def utcnow() -> datetime:
    return datetime.now(UTC)


class Timed:
    """Wraps the Twilio sender and notes when each message was handed to it (wall time)."""

    channels = ("sms", "whatsapp")

    def __init__(self, inner, log: list[tuple[float, str, str]], lock: threading.Lock) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.log, self.lock = inner, log, lock

    def render(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.inner.render(*args, **kwargs)

    def send(self, message: Outgoing) -> SendResult:
        started = time.monotonic()
        result = self.inner.send(message)
        with self.lock:
            self.log.append((started, message.channel, message.body))
        return result


class RecordingLimiter(RateLimiter):
    """The real limiter, noting when (wall time) it let each message go and at what price."""

    def __init__(self, limits: dict[str, float], grants: list[tuple[float, str, int]], lock: threading.Lock):
        super().__init__(limits)
        self.grants, self.lock = grants, lock

    def allow(self, session, candidates):  # type: ignore[no-untyped-def]
        allowed, throttled = super().allow(session, candidates)
        if allowed:
            session.flush()  # the bucket is written (and locked) before the grant counts
            when, chosen = time.monotonic(), set(allowed)
            with self.lock:
                self.grants += [(when, channel, price) for message_id, channel, price in candidates
                                if message_id in chosen]
        return allowed, throttled


class Process:
    """One sending process: its own engine (the runtime's), its own limiter, the shared database."""

    def __init__(self, runtime: Runtime, limits: dict[str, float] | None, log: list[tuple[float, str, str]],
                 lock: threading.Lock, grants: list[tuple[float, str, int]] | None = None) -> None:
        self.runtime = runtime
        timed = Timed(runtime.senders["sms"], log, lock)
        limiter = RecordingLimiter(limits, grants if grants is not None else [], lock) if limits else None
        self.outbox = Outbox(runtime.factory, {"sms": timed, "whatsapp": timed}, limiter=limiter)

    def drain(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        """Dispatch loops, as the dispatcher thread runs them, until `done()` or the timeout."""
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if self.outbox.dispatch(utcnow).total() == 0:
                time.sleep(0.02)


def queue(runtime: Runtime, bodies: list[str], channel: str = "sms", priority: int = 10,
          kind: str = "broadcast") -> None:
    now = utcnow() - timedelta(seconds=1)
    with runtime.factory() as session, session.begin():
        for n, body in enumerate(bodies):
            address = f"+5255100{n:05d}" if channel == "sms" else f"whatsapp:+5255200{n:05d}"
            enqueue(session, key=f"test:{channel}:{kind}:{n}:{time.monotonic_ns()}", learner_id=None,
                    channel=channel, to_address=address, parts=[Rendered(body)], kind=kind, now=now,
                    priority=priority)


def sent_count(runtime: Runtime) -> int:
    with runtime.factory() as session:
        return int(session.scalar(select(func.count()).select_from(OutboundMessage)
                                  .where(OutboundMessage.status == "sent")) or 0)


def assert_rate(times: list[float], rate: float, prices: list[int] | None = None, slack: float = 0.05) -> None:
    """No window holds more than the bucket (max(rate, 1)) plus `rate` per second of the window."""
    prices = prices or [1] * len(times)
    order = sorted(range(len(times)), key=lambda n: times[n])
    capacity = max(rate, 1.0)
    for i, first in enumerate(order):
        spent = 0
        for last in order[i:]:
            spent += prices[last]
            window = times[last] - times[first]
            # the last message of a window may overdraw the bucket (nothing is too big to send)
            allowed = capacity + rate * (window + slack) + prices[last] - 1
            assert spent <= allowed, (
                f"{spent} units in {window:.2f} s at {rate}/s: {[round(times[n] - times[order[0]], 2) for n in order]}")


# -- configuration -----------------------------------------------------------------------------------


def test_rate_limits_come_from_the_environment() -> None:
    assert Settings.from_env({}).rate_limits == DEFAULT_RATE_LIMITS == {"sms": 1.0, "whatsapp": 80.0,
                                                                        "telegram": 30.0}
    assert Settings.from_env({"RATE_LIMITS": "sms=2"}).rate_limits == {"sms": 2.0, "whatsapp": 80.0,
                                                                       "telegram": 30.0}
    assert Settings.from_env({"RATE_LIMITS": "sms=2, whatsapp=10"}).rate_limits == {
        "sms": 2.0, "whatsapp": 10.0, "telegram": 30.0}
    assert Settings.from_env({"RATE_LIMITS": "off"}).rate_limits is None
    assert Settings.from_env({"RATE_LIMITS": "OFF"}).rate_limits is None


def test_an_sms_costs_its_segment_count() -> None:
    assert analyse(THREE_SEGMENTS).segments == 3 and analyse(THREE_SEGMENTS).encoding == "GSM-7"
    assert cost("sms", ONE_SEGMENT, None) == 1
    assert cost("sms", THREE_SEGMENTS, None) == 3
    assert cost("sms", "Café ☕ " * 20, None) == analyse("Café ☕ " * 20).segments >= 3  # UCS-2
    assert cost("whatsapp", THREE_SEGMENTS, None) == 1
    assert cost("sms", THREE_SEGMENTS, "HX" + "0" * 32) == 1  # a template is one message


# -- bursts ------------------------------------------------------------------------------------------


def test_a_burst_of_ten_sms_at_two_per_second_takes_about_five_seconds(make_runtime: Callable[..., Runtime],
                                                                       fake_twilio: FakeTwilio) -> None:
    limits = {"sms": 2.0}
    runtime = make_runtime(rate_limits=limits)
    log: list[tuple[float, str, str]] = []
    grants: list[tuple[float, str, int]] = []
    process = Process(runtime, limits, log, threading.Lock(), grants)
    queue(runtime, [ONE_SEGMENT] * 10)
    started = time.monotonic()
    process.drain(lambda: sent_count(runtime) == 10)
    elapsed = time.monotonic() - started
    assert sent_count(runtime) == 10 and len(fake_twilio.messages) == 10
    assert 3.7 <= elapsed <= 6.5, elapsed  # two at once (a full bucket), then one every 0.5 s
    assert_rate([t for t, _c, _p in grants], 2.0)


def test_the_same_burst_through_scheduler_ticks(make_runtime: Callable[..., Runtime],
                                                fake_twilio: FakeTwilio) -> None:
    runtime = make_runtime(rate_limits={"sms": 2.0})
    queue(runtime, [ONE_SEGMENT] * 10)
    started = time.monotonic()
    report = tick(runtime, budget=1.0)  # a short tick sends what the rate allows and leaves the rest
    assert 2 <= report.sent <= 5
    while sent_count(runtime) < 10 and time.monotonic() - started < 20:
        tick(runtime, budget=1.0)
    assert sent_count(runtime) == 10
    assert 3.7 <= time.monotonic() - started <= 7.0


def test_a_three_segment_sms_costs_three(make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio) -> None:
    """At 1 segment/s a 3-segment SMS goes out at once (nothing is too big), and the next waits 3 s."""
    limits = {"sms": 1.0}
    runtime = make_runtime(rate_limits=limits)
    log: list[tuple[float, str, str]] = []
    process = Process(runtime, limits, log, threading.Lock())
    queue(runtime, [THREE_SEGMENTS, ONE_SEGMENT, ONE_SEGMENT])
    process.drain(lambda: sent_count(runtime) == 3)
    assert [body for _t, _c, body in log] == [THREE_SEGMENTS, ONE_SEGMENT, ONE_SEGMENT]
    first, second, third = (t for t, _c, _b in log)
    assert 2.7 <= second - first <= 4.0, second - first
    assert 0.8 <= third - second <= 1.6, third - second
    assert fake_twilio.messages[0].body == THREE_SEGMENTS  # one provider message of three segments


def test_channels_have_their_own_rates(make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio) -> None:
    limits = {"sms": 1.0, "whatsapp": 80.0}
    runtime = make_runtime(rate_limits=limits)
    log: list[tuple[float, str, str]] = []
    grants: list[tuple[float, str, int]] = []
    process = Process(runtime, limits, log, threading.Lock(), grants)
    queue(runtime, [ONE_SEGMENT] * 4)
    queue(runtime, [ONE_SEGMENT] * 20, channel="whatsapp")
    started = time.monotonic()
    process.drain(lambda: sent_count(runtime) == 24)
    whatsapp = [t - started for t, channel, _b in log if channel == "whatsapp"]
    sms = [t - started for t, channel, _b in log if channel == "sms"]
    assert len(whatsapp) == 20 and max(whatsapp) < 1.5  # not held back by the slow SMS bucket
    assert len(sms) == 4 and max(sms) >= 2.7  # one a second
    assert_rate([t for t, channel, _p in grants if channel == "sms"], 1.0)


def test_off_disables_the_limits(make_runtime: Callable[..., Runtime], fake_twilio: FakeTwilio) -> None:
    limits = Settings.from_env({"RATE_LIMITS": "off"}).rate_limits
    runtime = make_runtime(rate_limits=limits)
    assert runtime.outbox.limiter is None
    queue(runtime, [THREE_SEGMENTS] * 30)
    started = time.monotonic()
    report = tick(runtime, budget=10)
    assert report.sent == 30
    assert time.monotonic() - started < 3.0
    assert len(fake_twilio.messages) == 30


# -- several processes -------------------------------------------------------------------------------


def test_two_processes_sharing_the_database_together_respect_the_rate(make_runtime: Callable[..., Runtime],
                                                                      fake_twilio: FakeTwilio) -> None:
    limits = {"sms": 4.0}
    log: list[tuple[float, str, str]] = []
    lock = threading.Lock()
    first, second = make_runtime(rate_limits=limits), make_runtime(rate_limits=limits)  # two engines
    grants: list[tuple[float, str, int]] = []
    processes = [Process(first, limits, log, lock, grants), Process(second, limits, log, lock, grants)]
    queue(first, [ONE_SEGMENT] * 16)
    started = time.monotonic()
    threads = [threading.Thread(target=p.drain, args=(lambda: sent_count(first) == 16,)) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    elapsed = time.monotonic() - started
    assert sent_count(first) == 16 and len(fake_twilio.messages) == 16
    assert len({m.to for m in fake_twilio.messages}) == 16  # nothing twice
    assert 2.7 <= elapsed <= 6.0, elapsed  # 4 at once, then 12 at 4/s: 3 s, not half of it
    assert len(grants) == 16
    assert_rate([t for t, _c, _p in grants], 4.0)


def test_segments_count_across_processes_too(make_runtime: Callable[..., Runtime],
                                             fake_twilio: FakeTwilio) -> None:
    limits = {"sms": 3.0}
    log: list[tuple[float, str, str]] = []
    lock = threading.Lock()
    first, second = make_runtime(rate_limits=limits), make_runtime(rate_limits=limits)
    grants: list[tuple[float, str, int]] = []
    processes = [Process(first, limits, log, lock, grants), Process(second, limits, log, lock, grants)]
    queue(first, [THREE_SEGMENTS] * 5)  # 15 segments at 3 segments/s
    started = time.monotonic()
    threads = [threading.Thread(target=p.drain, args=(lambda: sent_count(first) == 5,)) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    assert sent_count(first) == 5
    # each 3-segment SMS needs a whole token to start and then overdraws: 0, 0.33, 1.33, 2.33, 3.33 s
    assert 3.1 <= time.monotonic() - started <= 7.0
    assert [p for _t, _c, p in grants] == [3] * 5
    assert_rate([t for t, _c, _p in grants], 3.0, prices=[3] * 5)


# -- replies before bulk, under the limit ------------------------------------------------------------


def test_a_reply_queued_behind_a_throttled_burst_goes_next(make_runtime: Callable[..., Runtime],
                                                           fake_twilio: FakeTwilio) -> None:
    limits = {"sms": 2.0}
    runtime = make_runtime(rate_limits=limits)
    log: list[tuple[float, str, str]] = []
    process = Process(runtime, limits, log, threading.Lock())
    queue(runtime, [f"Aviso {n}" for n in range(12)])
    process.drain(lambda: sent_count(runtime) >= 2, timeout=5)
    queue(runtime, ["Respuesta a tu mensaje"], priority=0, kind="reply")  # a learner wrote meanwhile
    process.drain(lambda: sent_count(runtime) == 13)
    bodies = [body for _t, _c, body in sorted(log)]
    assert bodies.index("Respuesta a tu mensaje") <= 3, bodies  # not behind the other ten
