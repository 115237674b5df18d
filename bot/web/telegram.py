"""POST /webhooks/telegram: check the secret token, parse the Update, hand over, answer 200 fast."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from bot.channels.telegram import NotAnUpdate, TelegramSender, parse_update, secret_is_valid
from bot.dispatcher import utcnow
from bot.runtime import Runtime
from bot.services import Envelope, receive, telegram_membership

bp = Blueprint("telegram", __name__)


def _plain(status: int, reason: str) -> Response:
    return Response(reason + "\n", status=status, mimetype="text/plain")


@bp.post("/webhooks/telegram")
def telegram_update() -> Response:
    runtime: Runtime = current_app.extensions["vereda"]
    settings = runtime.settings
    sender = runtime.senders.get("telegram")
    if not settings.telegram_enabled or not isinstance(sender, TelegramSender):
        return _plain(503, "Telegram channel is off: set TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET")
    if not secret_is_valid(settings, request.headers.get("X-Telegram-Bot-Api-Secret-Token")):
        return _plain(403, "invalid X-Telegram-Bot-Api-Secret-Token")
    try:
        event = parse_update(request.get_json(silent=True))
    except RecursionError:  # JSON nested deeper than the parser goes
        return _plain(400, "not a Telegram Update: nested too deeply")
    except NotAnUpdate as error:
        return _plain(400, str(error))
    if event.callback_query_id:
        sender.answer_callback(event.callback_query_id)  # first: the client waits for it
    now = utcnow()
    if event.kind in ("message", "press") and event.chat_id is not None:
        envelope = Envelope(channel="telegram", provider_id=str(event.update_id), address=str(event.chat_id),
                            text=event.text, media_count=event.media_count, choice=event.choice, ref=event.ref,
                            course_start=event.course_start, telegram_chat_id=event.chat_id)
        received = receive(runtime.factory, envelope, runtime.context(now), runtime.senders)
        # A pressed keyboard is spent whatever the press counted for (answered now, before, or outdated);
        # a question answered by typing loses its keyboard too. Old buttons then cannot confuse anyone.
        spent: set[int] = {event.message_id} if event.kind == "press" and event.message_id is not None else set()
        for provider_id in received.stale_buttons:
            chat, _, number = provider_id.partition(":")
            if chat == str(event.chat_id) and number.isdigit():
                spent.add(int(number))
        for message_id in sorted(spent):
            sender.clear_buttons(event.chat_id, message_id)
        response = jsonify(ok=True)
        runtime.dispatcher.replies_sent_after(response, received.reply_keys)
        return response
    if event.kind in ("kicked", "member") and event.chat_id is not None:
        telegram_membership(runtime.factory, event.chat_id, blocked=event.kind == "kicked", now=now)
    return jsonify(ok=True)
