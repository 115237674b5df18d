"""The terminal as a channel: `vereda chat` and tests print what a learner would receive."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from bot.channels.base import Outgoing, Rendered, SendResult, numbered


class ConsoleSender:
    """Renders like the channel it plays (numbered options) and 'sends' by calling `write`."""

    channels: tuple[str, ...] = ("console",)

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def render(self, channel: str, text: str, choices: tuple[str, ...],
               quick_reply: str | None = None) -> list[Rendered]:
        return [Rendered(numbered(text, choices))]

    def send(self, message: Outgoing) -> SendResult:
        self.write(message.body)
        return SendResult(True, provider_id=f"console-{uuid.uuid4().hex[:12]}")
