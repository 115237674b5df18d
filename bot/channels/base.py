"""The channel interface: render a channel-neutral message, send one outbox row, say what happened."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Protocol

from bot.keywords import whole_number

MAX_OPTION = 999  # the highest option number a button of ours could carry


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
    # what the outbox needs to record the result without reading the row again
    learner_id: int | None = None
    kind: str = "reply"
    attempts: int = 1
    erase_after_send: bool = False


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


def button_number(payload: str | None) -> int | None:
    """The option number a pressed button carries (we send 1, 2, 3 …), or None for anything else: a payload
    not ours, other digits ("²", "٣"), or a number too long to be an option."""
    return whole_number(payload, MAX_OPTION)


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
            cut = _character_start(rest, limit)
            if "\ud800" <= rest[cut - 1] <= "\udbff":
                cut -= 1
        pieces.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        pieces.append(rest)
    return pieces


def _character_start(text: str, cut: int) -> int:
    """`cut` moved back to the start of the character the reader sees there (a grapheme cluster): never
    before a combining accent, variation selector or skin tone, never after a zero-width joiner, never
    between the two regional indicators of a flag. Unchanged if that would leave nothing before it."""
    def joins(index: int) -> bool:
        char = text[index]
        return (unicodedata.category(char) in ("Mn", "Mc", "Me") or char == "\u200d"
                or "\U0001f3fb" <= char <= "\U0001f3ff" or text[index - 1] == "\u200d")

    def flag_part(char: str) -> bool:
        return "\U0001f1e6" <= char <= "\U0001f1ff"

    start = cut
    while start > 0 and joins(start):
        start -= 1
    if start > 0 and flag_part(text[start]):
        before = start
        while before > 0 and flag_part(text[before - 1]):
            before -= 1
        start -= (start - before) % 2  # an odd run before: this indicator is the second half of a flag
    return start if start > 0 else cut
