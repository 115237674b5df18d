"""Provider webhooks: verify the signature, parse, hand over to one service, answer fast."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, request

from bot.channels import twilio
from bot.channels.base import button_number
from bot.dispatcher import utcnow
from bot.identity import BadAddress
from bot.runtime import Runtime
from bot.services import Envelope, receive

bp = Blueprint("webhooks", __name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
# What a status callback may carry: a status word (sent, delivered, canceled …; one we do not know
# goes into the history without moving the message) and a numeric error code, each within its column.
STATUS_WORD = re.compile(r"[a-z_]{1,16}")
ERROR_CODE = re.compile(r"[0-9]{1,16}")


def _runtime() -> Runtime:
    return current_app.extensions["vereda"]  # type: ignore[no-any-return]


def _plain(status: int, reason: str) -> Response:
    return Response(reason + "\n", status=status, mimetype="text/plain")


def _twilio_checked() -> Response | None:
    """503 when Twilio is off, 403 unless the request carries a valid Twilio signature."""
    settings = _runtime().settings
    if not settings.twilio_enabled:
        return _plain(503, "Twilio channel is off: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    url = twilio.public_url(settings, request.url, request.path, request.query_string.decode("latin-1"))
    signature = request.headers.get("X-Twilio-Signature")
    algorithm = request.headers.get("X-Twilio-Webhooks-Signature-Settings")
    if not twilio.signature_is_valid(settings, url, request.form, signature, algorithm):
        return _plain(403, "invalid X-Twilio-Signature")
    return None


@bp.post("/webhooks/twilio")
def twilio_inbound() -> Response:
    refused = _twilio_checked()
    if refused is not None:
        return refused
    try:
        message = twilio.parse_inbound(request.form)
    except twilio.BadRequest as error:
        return _plain(400, str(error))
    runtime = _runtime()
    choice = button_number(message.button_payload)
    envelope = Envelope(channel=message.channel, provider_id=message.message_sid, address=message.address,
                        text=message.text, media_count=message.media_count, choice=choice, to=message.to or None,
                        replied_to=message.replied_to if choice is not None else None)
    try:
        received = receive(runtime.factory, envelope, runtime.context(utcnow()), runtime.senders)
    except BadAddress as error:
        return _plain(400, f"From: {error}")
    response = Response(EMPTY_TWIML, mimetype="text/xml")
    runtime.dispatcher.replies_sent_after(response, received.reply_keys)
    return response


@bp.post("/webhooks/twilio/status")
def twilio_status() -> Response:
    refused = _twilio_checked()
    if refused is not None:
        return refused
    sid = (request.form.get("MessageSid") or request.form.get("SmsSid") or "").strip()
    status = (request.form.get("MessageStatus") or request.form.get("SmsStatus") or "").strip()
    if not sid or not status:
        return _plain(400, "missing MessageSid or MessageStatus")
    error_code = (request.form.get("ErrorCode") or "").strip() or None
    if not STATUS_WORD.fullmatch(status.lower()) or len(sid) > 64:
        return _plain(400, "MessageStatus must be a Twilio status word (e.g. delivered), MessageSid at most 64 "
                           "characters")
    if error_code is not None and not ERROR_CODE.fullmatch(error_code):
        return _plain(400, "ErrorCode must be a number of at most 16 digits")
    _runtime().outbox.status_callback_received(sid, status, error_code, utcnow())
    return Response(EMPTY_TWIML, mimetype="text/xml")
