"""Telegram through python-telegram-bot: secret check, Update parsing, sending on one long-lived loop."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from bot.channels.aiohttp_request import AiohttpRequest
from bot.channels.aioloop import LoopThread
from bot.channels.base import Outgoing, Rendered, SendResult, button_number, split_text
from bot.config import Settings

# RetryAfter.retry_after as a timedelta, the type python-telegram-bot moves to (without the opt-in every 429
# warns); send() reads either type.
os.environ.setdefault("PTB_TIMEDELTA", "true")

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every request URL, token included

TEXT_LIMIT = 4096  # characters per message (Bot API sendMessage)
ALLOWED_UPDATES = ["message", "edited_message", "callback_query", "my_chat_member"]
MEDIA_FIELDS = ("photo", "sticker", "location", "contact", "voice", "audio", "video", "video_note",
                "document", "animation", "venue", "poll", "dice")


def secret_is_valid(settings: Settings, header: str | None) -> bool:
    """Whether X-Telegram-Bot-Api-Secret-Token matches TELEGRAM_WEBHOOK_SECRET (constant time)."""
    expected = settings.telegram_webhook_secret
    if not expected or header is None:
        return False
    return hmac.compare_digest(expected.encode(), header.encode())


@dataclass(frozen=True)
class TelegramEvent:
    """What one Update means for us."""

    kind: str  # message, press, kicked, member, edited, ignored, group
    update_id: int
    chat_id: int | None = None
    text: str = ""
    media_count: int = 0
    course_start: str | None = None
    choice: int | None = None
    ref: str | None = None
    callback_query_id: str | None = None
    message_id: int | None = None


class NotAnUpdate(ValueError):
    """A body that is not a Telegram Update (400)."""


def telegram_id_in_range(value: object) -> bool:
    """Telegram's ids (chat, update, message) are integers that fit a signed 64-bit integer, as our columns do;
    others (strings, fractions, true/false) are not from Telegram."""
    return type(value) is int and -(2**63) <= value < 2**63


def _unicode(value: object) -> bool:
    """Text we can store: a string without lone surrogates (JSON's "\\ud800" decodes to one)."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_start(text: str) -> tuple[str | None, str]:
    """`/start`, `/start@OurBot` or `/start <course-id>`: (the course id or "", no text); else (None, text)."""
    if text.startswith("/start"):
        head, _, argument = text.partition(" ")
        if head.split("@", 1)[0] == "/start":
            return argument.strip(), ""
    return None, text


def parse_update(data: Any) -> TelegramEvent:
    """Parse a webhook body with `Update.de_json` and say what it means."""
    event = _parse_update(data)
    ids = (event.update_id, *(value for value in (event.chat_id, event.message_id) if value is not None))
    if not all(telegram_id_in_range(value) for value in ids) or event.chat_id == 0:
        raise NotAnUpdate("not a Telegram Update: an id that is no 64-bit integer")
    return event


def _parse_update(data: Any) -> TelegramEvent:
    if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
        raise NotAnUpdate("not a Telegram Update: no integer update_id")
    try:
        update = Update.de_json(data, None)
    except Exception as error:  # malformed nested objects
        raise NotAnUpdate(f"not a Telegram Update: {type(error).__name__}") from None
    uid = update.update_id
    if update.callback_query is not None:
        query = update.callback_query
        message = query.message
        chat = message.chat if message is not None else None
        if not _unicode(query.data):
            raise NotAnUpdate("not a Telegram Update: callback data must be text")
        data = query.data or ""
        ref, _, number = data.rpartition("|")
        choice = button_number(number)
        if chat is None or chat.type != "private" or choice is None:
            return TelegramEvent("ignored", uid, callback_query_id=query.id)
        return TelegramEvent("press", uid, chat_id=chat.id, choice=choice, ref=ref or None,
                             callback_query_id=query.id, message_id=message.message_id if message else None)
    if update.my_chat_member is not None:
        member = update.my_chat_member
        if member.chat is None or member.new_chat_member is None:
            raise NotAnUpdate("not a Telegram Update: my_chat_member needs chat and new_chat_member")
        if member.chat.type != "private":
            return TelegramEvent("ignored", uid)
        status = member.new_chat_member.status
        return TelegramEvent("kicked" if status == "kicked" else "member", uid, chat_id=member.chat.id)
    if update.edited_message is not None or update.edited_channel_post is not None:
        return TelegramEvent("edited", uid)  # an edited answer is never graded again
    message = update.message
    if message is None:
        return TelegramEvent("ignored", uid)  # channel posts, inline queries, polls …
    if message.chat is None or not _unicode(message.text):
        raise NotAnUpdate("not a Telegram Update: a message needs a chat, and its text must be text")
    if message.chat.type != "private":
        return TelegramEvent("group", uid, chat_id=message.chat.id)
    media = sum(1 for name in MEDIA_FIELDS if getattr(message, name, None))
    start, text = split_start(message.text or "")
    return TelegramEvent("message", uid, chat_id=message.chat.id, text=text if not media else "",
                         media_count=media, course_start=start)


class _BotHolder:
    """A sender's Bot, the loop it was built on, and its initialize() task."""

    __slots__ = ("bot", "loop", "pid", "ready")

    def __init__(self) -> None:
        self.bot: Bot | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready: asyncio.Task[None] | None = None
        self.pid = 0  # the process that built the Bot (a forked child has the loop object, not its thread)


def _shutdown(holder: _BotHolder, own_loop: LoopThread | None, wait: float = 2.0) -> None:
    """Shut the holder's Bot down on its loop (waiting up to `wait` s unless called on that loop), then stop
    `own_loop`. Safe from any thread, also from a garbage collection that happens on the loop thread."""
    bot, loop, pid = holder.bot, holder.loop, holder.pid
    holder.bot = holder.loop = holder.ready = None
    if bot is None or loop is None or pid != os.getpid() or loop.is_closed() or not loop.is_running():
        if own_loop is not None:
            own_loop.stop()
        return

    async def down() -> None:
        try:
            await bot.shutdown()
        except Exception as error:  # closing only: nothing to do about it
            log.debug("Bot.shutdown failed: %s", type(error).__name__)
        if own_loop is not None:
            own_loop.stop()  # after the session is closed, never before

    future = asyncio.run_coroutine_threadsafe(down(), loop)
    try:
        on_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        on_loop = False
    if not on_loop:
        try:
            future.result(wait)
        except Exception as error:
            log.debug("closing the Telegram Bot: %s", type(error).__name__)


class TelegramSender:
    """Sends through one `Bot` that lives on one event loop thread; safe to call from any thread."""

    channels: tuple[str, ...] = ("telegram",)

    def __init__(self, settings: Settings, loop: LoopThread | None = None, timeout: float = 10.0) -> None:
        self.settings = settings
        self.loop = loop or LoopThread("vereda-telegram")
        self.timeout = timeout
        self._holder = _BotHolder()
        # When the sender goes away (or the process exits), close the Bot's HTTP session on its loop, and stop
        # the loop thread if it is this sender's own.
        self._finalizer_loop = None if loop is not None else self.loop
        self._finalizer = weakref.finalize(self, _shutdown, self._holder, self._finalizer_loop)

    def _build_bot(self) -> Bot:
        # PTB's Bot over aiohttp instead of its default httpx transport: a quarter of the CPU per call
        # (bot/channels/aiohttp_request.py). The pool timeout stays PTB's default (1 s).
        request = AiohttpRequest(connection_pool_size=32, read_timeout=self.timeout,
                                 connect_timeout=self.timeout, write_timeout=self.timeout)
        base = self.settings.telegram_api_base_url
        return Bot(self.settings.telegram_bot_token or "", base_url=f"{base}/bot", base_file_url=f"{base}/file/bot",
                   request=request)

    async def _get_bot(self) -> Bot:
        """The Bot of the running loop, built and initialised (getMe) once; concurrent first calls share it."""
        holder, loop = self._holder, asyncio.get_running_loop()
        ready = holder.ready
        if holder.loop is not loop or ready is None or (ready.done() and (ready.cancelled()
                                                                          or ready.exception() is not None)):
            # First call, a failed initialize (retried), or a new loop (after a fork, or after close()): an
            # aiohttp session belongs to the loop it was made on.
            failed = holder.bot if holder.loop is loop else None
            holder.bot, holder.loop, holder.pid = self._build_bot(), loop, os.getpid()
            holder.ready = ready = loop.create_task(holder.bot.initialize())
            if failed is not None:
                try:
                    await failed.shutdown()  # the session of the Bot whose initialize() failed
                except Exception as error:
                    log.debug("Bot.shutdown failed: %s", type(error).__name__)
        if not ready.done():
            await asyncio.shield(ready)
        ready.result()
        assert holder.bot is not None
        return holder.bot

    def close(self) -> None:
        """Close the Bot's HTTP session (and stop the loop thread if this sender made it). Sending again later
        builds a new Bot."""
        self._finalizer()
        self._finalizer = weakref.finalize(self, _shutdown, self._holder, self._finalizer_loop)

    def call(self, method: str, **kwargs: Any) -> Any:
        """Call a Bot method by name on the loop thread and wait for it (operator commands, callbacks)."""

        async def run() -> Any:
            bot = await self._get_bot()
            return await getattr(bot, method)(**kwargs)

        return self.loop.run(run(), timeout=self.timeout * 2)

    def render(self, channel: str, text: str, choices: tuple[str, ...],
               quick_reply: str | None = None) -> list[Rendered]:
        pieces = split_text(text, TEXT_LIMIT)
        return [Rendered(piece, choices if n == len(pieces) - 1 else ()) for n, piece in enumerate(pieces)]

    def send(self, message: Outgoing) -> SendResult:
        markup = None
        if message.buttons:
            prefix = message.ref or ""
            markup = InlineKeyboardMarkup([
                [InlineKeyboardButton(label[:64], callback_data=f"{prefix}|{n}"[-64:])]
                for n, label in enumerate(message.buttons, start=1)
            ])
        try:
            # No parse_mode: the text goes as plain text, so lesson punctuation can never break it.
            sent = self.call("send_message", chat_id=int(message.to_address), text=message.body, reply_markup=markup)
        except Forbidden as error:  # 403: the person blocked the bot
            return SendResult(False, error_code="403", error_message=str(error)[:200], opt_out=True)
        except RetryAfter as error:
            wait = error.retry_after
            seconds = wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
            return SendResult(False, error_code="429", error_message="retry after", retry=True, retry_after=seconds)
        except BadRequest as error:  # a NetworkError subclass in python-telegram-bot: catch it first
            invalid = "chat not found" in str(error).lower()
            return SendResult(False, error_code="400", error_message=str(error)[:200], invalid_address=invalid)
        except (TimedOut, NetworkError, TimeoutError) as error:
            return SendResult(False, error_code="network", error_message=type(error).__name__, retry=True)
        return SendResult(True, provider_id=f"{sent.chat_id}:{sent.message_id}")

    def answer_callback(self, query_id: str, wait: float = 2.0) -> None:
        """Answer a button press at once (clients show a spinner until we do); failures are only logged.

        The webhook waits at most `wait` seconds: a hanging Bot API must not hold up our 200 (the call goes on
        in the background on the loop).
        """

        async def run() -> Any:
            bot = await self._get_bot()
            return await bot.answer_callback_query(callback_query_id=query_id)

        try:
            self.loop.run(run(), timeout=wait)
        except Exception as error:
            log.warning("answerCallbackQuery failed: %s", type(error).__name__)

    def clear_buttons(self, chat_id: int, message_id: int) -> None:
        """Remove the keyboard of an answered (or outdated) question, so it cannot be pressed again.

        Nothing waits for it: the call runs on the loop in the background and a failure (the message is too
        old to edit, the person deleted it) is only logged.
        """

        async def run() -> Any:
            bot = await self._get_bot()
            return await bot.edit_message_reply_markup(chat_id=chat_id, message_id=message_id, reply_markup=None)

        def done(future: Any) -> None:
            error = future.exception()
            if error is not None:
                log.info("editMessageReplyMarkup failed: %s", type(error).__name__)

        self.loop.submit(run()).add_done_callback(done)
