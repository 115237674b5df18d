"""The channel interface: render a channel-neutral message, send one outbox row, say what happened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Rendered:
    """One provider message: its body and, where the channel has buttons, the options as buttons."""

    body: str
    buttons: tuple[str, ...] = ()
    content_sid: str | None = None  # a provider template that carries the buttons (WhatsApp quick replies)
    content_variables: dict[str, str] | None = None


@dataclass(frozen=True)
class Outgoing:
    """What a sender needs of an outbox row."""

    id: int
    channel: str
    to_address: str
    from_address: str | None
    body: str
    buttons: tuple[str, ...]
    status_callback: str | None = None
    ref: str | None = None  # what the buttons answer (conversation.Outbound.ref)
    content_sid: str | None = None  # send this approved template instead of the body (WhatsApp)
    content_variables: dict[str, str] | None = None


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry: bool = False  # transient: the same message may be tried again later
    retry_after: float | None = None  # seconds the provider asked us to wait
    opt_out: bool = False  # the provider says the person blocked or unsubscribed
    invalid_address: bool = False


class Sender(Protocol):
    channels: tuple[str, ...]

    def render(self, channel: str, text: str, choices: tuple[str, ...],
               quick_reply: str | None = None) -> list[Rendered]: ...

    def send(self, message: Outgoing) -> SendResult: ...


def numbered(text: str, choices: tuple[str, ...]) -> str:
    """Options as numbered lines under the text, for channels without buttons."""
    if not choices:
        return text
    return text + "\n" + "\n".join(f"{n}) {choice}" for n, choice in enumerate(choices, start=1))


def split_text(text: str, limit: int) -> list[str]:
    """`text` cut into pieces of at most `limit` characters, at paragraph, line or word boundaries."""
    pieces: list[str] = []
    rest = text.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max(window.rfind("\n\n"), 0) or max(window.rfind("\n"), 0) or max(window.rfind(" "), 0)
        if cut <= limit // 3:  # no good boundary: cut hard, but never inside a surrogate pair
            cut = limit
            if "\ud800" <= rest[cut - 1] <= "\udbff":
                cut -= 1
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces
