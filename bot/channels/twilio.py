"""SMS and WhatsApp through Twilio: signature check, inbound parsing and sending with the REST client."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import requests.utils
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client

from bot.channels.base import Outgoing, Rendered, SendResult, numbered, split_text
from bot.config import Settings

# Twilio's client logs every request's parameters (numbers and bodies) at INFO: keep it quieter.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

QUICK_REPLY_MAX = 3  # buttons WhatsApp allows in session without template approval
QUICK_REPLY_BODY = 1024
QUICK_REPLY_TITLE = 20  # WhatsApp's limit on a button title
BODY_LIMIT = 1600  # Twilio rejects longer bodies (error 21617)
OPT_OUT_CODES = {"21610", "63014"}  # unsubscribed (STOP) / blocked on WhatsApp
INVALID_CODES = {"21211", "21614", "30005", "30006", "63024"}
RETRY_CODES = {"20429", "30008", "63018"}
# 63016 (outside the WhatsApp 24 h window) is neither: the outbox holds the message (see outbox.py).


class BadRequest(ValueError):
    """An inbound request we refuse with 400 and this reason."""


@dataclass(frozen=True)
class TwilioInbound:
    channel: str  # sms or whatsapp
    message_sid: str
    address: str  # the From as given, e.g. "whatsapp:+5215512345678"
    to: str
    text: str
    media_count: int
    button_payload: str | None
    replied_to: str | None  # OriginalRepliedMessageSid: which of our messages a button reply answers
    profile_name: str | None


def signature_is_valid(settings: Settings, url: str, form: Mapping[str, str], signature: str | None,
                       signature_settings: str | None = None) -> bool:
    """Whether `X-Twilio-Signature` signs this URL and form with the account's auth token."""
    if not signature or not settings.twilio_auth_token:
        return False
    # X-Twilio-Webhooks-Signature-Settings names the algorithm (HMAC-SHA256); without it, HMAC-SHA1.
    algorithm = get_signature_algorithm(signature_settings)
    return RequestValidator(settings.twilio_auth_token).validate(url, form, signature, algorithm)


def public_url(settings: Settings, request_url: str, path: str, query: str) -> str:
    """The URL Twilio signed: PUBLIC_BASE_URL plus the path when set (behind proxies), else as received."""
    if not settings.public_base_url:
        return request_url
    return f"{settings.public_base_url}{path}" + (f"?{query}" if query else "")


def parse_inbound(form: Mapping[str, str]) -> TwilioInbound:
    """A Twilio inbound message webhook, or BadRequest naming what is missing."""
    sid = (form.get("MessageSid") or form.get("SmsMessageSid") or "").strip()
    sender = (form.get("From") or "").strip()
    missing = [name for name, value in (("From", sender), ("MessageSid", sid)) if not value]
    if missing:
        raise BadRequest(f"missing {' and '.join(missing)}")
    channel = "whatsapp" if sender.lower().startswith("whatsapp:") else "sms"
    try:
        media_count = int(form.get("NumMedia") or 0)
    except ValueError:
        raise BadRequest("NumMedia is not a number") from None
    return TwilioInbound(
        channel=channel,
        message_sid=sid[:64],
        address=sender,
        to=(form.get("To") or "").strip(),
        text=form.get("Body") or "",
        media_count=media_count + (1 if form.get("Latitude") else 0),
        button_payload=form.get("ButtonPayload") or None,
        replied_to=form.get("OriginalRepliedMessageSid") or None,
        profile_name=form.get("ProfileName") or None,
    )


class TwilioSender:
    """Sends outbox rows with the real twilio REST client (TWILIO_API_BASE_URL honoured)."""

    channels: tuple[str, ...] = ("sms", "whatsapp")

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        # requests reads the proxy and CA settings from the environment on every request (a scan of
        # os.environ that costs more CPU than the rest of a send); read them once, for Twilio's host, here.
        http = TwilioHttpClient(timeout=timeout,
                                proxy=requests.utils.get_environ_proxies(settings.twilio_api_base_url))
        if http.session is not None:
            http.session.trust_env = False
            http.session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http)
        # The SDK builds every Messages URL from this domain's base_url.
        self.client.api.base_url = settings.twilio_api_base_url

    def render(self, channel: str, text: str, choices: tuple[str, ...],
               quick_reply: str | None = None) -> list[Rendered]:
        if channel == "whatsapp" and quick_reply and 0 < len(choices) <= QUICK_REPLY_MAX \
                and len(text) <= QUICK_REPLY_BODY and all(len(c) <= QUICK_REPLY_TITLE for c in choices):
            variables = {"1": text} | {str(n): choice for n, choice in enumerate(choices, start=2)}
            return [Rendered(numbered(text, choices), choices, quick_reply, variables)]
        # System texts arrive GSM-7-friendly already (messages.say); lesson text is as its author wrote it.
        body = numbered(text, choices)
        return [Rendered(piece) for piece in split_text(body, BODY_LIMIT)]

    def sender_for(self, message: Outgoing) -> dict[str, str]:
        if message.channel == "whatsapp":
            origin = self.settings.twilio_whatsapp_from or message.from_address
            return {"from_": origin} if origin else {}
        if self.settings.twilio_messaging_service_sid:
            return {"messaging_service_sid": self.settings.twilio_messaging_service_sid}
        origin = self.settings.twilio_sms_from or message.from_address
        return {"from_": origin} if origin else {}

    def send(self, message: Outgoing) -> SendResult:
        origin = self.sender_for(message)
        if not origin:
            return SendResult(False, error_code="config", error_message=f"no {message.channel} sender set")
        extra: dict[str, str] = {"status_callback": message.status_callback} if message.status_callback else {}
        if message.content_sid:  # an approved template: Twilio renders it, the body is not sent
            extra["content_sid"] = message.content_sid
            extra["content_variables"] = json.dumps(message.content_variables or {})
        else:
            extra["body"] = message.body
        try:
            sent = self.client.messages.create(to=message.to_address, **origin, **extra)
        except TwilioRestException as error:
            return classify(error)
        except Exception as error:  # timeouts, refused connections, broken responses: try again later
            return SendResult(False, error_code="network", error_message=type(error).__name__, retry=True)
        return SendResult(True, provider_id=sent.sid)


def classify(error: TwilioRestException) -> SendResult:
    """What a Twilio API error means for the message and the learner."""
    code = str(error.code) if error.code else None
    message = (error.msg or "")[:200]
    if code in OPT_OUT_CODES:
        return SendResult(False, error_code=code, error_message=message, opt_out=True)
    if code in INVALID_CODES:
        return SendResult(False, error_code=code, error_message=message, invalid_address=True)
    if error.status == 429 or error.status >= 500 or code in RETRY_CODES:
        return SendResult(False, error_code=code or str(error.status), error_message=message, retry=True)
    return SendResult(False, error_code=code or str(error.status), error_message=message)
