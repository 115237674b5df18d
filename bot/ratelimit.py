"""Per-sender send rates (RATE_LIMITS), respected across processes through a token bucket row each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bot.models import RateBucket
from bot.sms import analyse


def cost(channel: str, body: str, content_sid: str | None) -> int:
    """What one message costs against its channel's rate: SMS counts segments, the rest one each."""
    if channel == "sms" and not content_sid:
        return max(analyse(body).segments, 1)
    return 1


class RateLimiter:
    """Token buckets that hold one second's worth of messages; a message may overdraw the bucket, so
    a 3-segment SMS at 1 segment/s goes out and the next waits 3 s (nothing is ever too big to send)."""

    def __init__(self, limits: dict[str, float], clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.limits = limits
        self.clock = clock  # wall time, not the scheduler's logical `now`: rates are about real seconds

    def allow(self, session: Session, candidates: Sequence[tuple[int, str, int]]) -> tuple[list[int], bool]:
        """The ids (in order) that may be sent now, of (id, channel, cost); and whether any had to wait."""
        allowed: list[int] = []
        throttled = False
        buckets: dict[str, RateBucket] = {}
        now = self.clock()
        for message_id, channel, price in candidates:
            rate = self.limits.get(channel)
            if rate is None:
                allowed.append(message_id)
                continue
            bucket = buckets.get(channel)
            if bucket is None:
                bucket = buckets[channel] = self._bucket(session, channel, rate, now)
            if bucket.tokens < 1:  # a whole token is needed to start a message (it may then overdraw)
                throttled = True
                continue
            bucket.tokens -= price
            allowed.append(message_id)
        return allowed, throttled

    def _bucket(self, session: Session, channel: str, rate: float, now: datetime) -> RateBucket:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(insert(RateBucket).values(name=channel, tokens=rate, updated_at=now)
                        .on_conflict_do_nothing(index_elements=["name"]))
        bucket = session.scalars(select(RateBucket).where(RateBucket.name == channel).with_for_update()).one()
        elapsed = max((now - bucket.updated_at).total_seconds(), 0.0)
        bucket.tokens = min(max(rate, 1.0), bucket.tokens + elapsed * rate)
        bucket.updated_at = now
        return bucket
