"""SMS and WhatsApp through Twilio: signature check, inbound parsing and sending with the REST client."""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import certifi
import urllib3
from twilio.base.exceptions import TwilioRestException
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.rest import Client

from bot.channels.base import Outgoing, Rendered, SendResult, numbered, split_text
from bot.config import Settings
from bot.keywords import whole_number

# Twilio's own client logs every request's parameters (numbers and bodies) at INFO: keep it quieter, in case
# anything still uses it. PooledHttpClient below logs at DEBUG only, and never a query, a form or a header.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)
log = logging.getLogger(__name__)

QUICK_REPLY_MAX = 3  # buttons WhatsApp allows in session without template approval
QUICK_REPLY_BODY = 1024
QUICK_REPLY_TITLE = 20  # WhatsApp's limit on a button title
BODY_LIMIT = 1600  # Twilio rejects longer bodies (error 21617)
MAX_MEDIA = 10  # files one inbound message carries at most (NumMedia)
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
    media_count = whole_number((form.get("NumMedia") or "0").strip(), MAX_MEDIA, lowest=0)
    if media_count is None:
        raise BadRequest(f"NumMedia must be a whole number from 0 to {MAX_MEDIA}")
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


class PooledHttpClient(HttpClient):
    """The twilio SDK's transport, over urllib3 keep-alive connection pools instead of `requests`.

    The SDK still builds the URL, the headers and the form, and turns error answers into TwilioRestException;
    this only moves bytes. `requests` costs about 1 ms of CPU per call in its own layers (hooks, cookie jar,
    prepared requests, environment merging). Proxies (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) and the CA
    bundle (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else certifi's, as `requests` does) are read once, here.
    Requests are never retried by the transport (a POST may have reached Twilio): the outbox retries with
    backoff. `timeout` bounds the connect and each read.
    """

    def __init__(self, timeout: float | None = 10.0, pool_size: int = 16) -> None:
        super().__init__(log, False, timeout)
        self.ca_certs = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
        self.proxies = urllib.request.getproxies_environment()  # {"https": ..., "no": ...}, lowercase first
        self.pool_size = pool_size
        self._managers: dict[str, urllib3.PoolManager] = {}  # per proxy URL ("" = direct)
        self._auth: tuple[tuple[str, str], str] | None = None

    def proxy_for(self, url: str) -> str | None:
        """The proxy this URL goes through (None: direct), by the environment read at construction."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if "no" in self.proxies and urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                host if parts.port is None else f"{host}:{parts.port}", self.proxies):
            return None
        return self.proxies.get(parts.scheme) or self.proxies.get("all")

    def _manager(self, url: str) -> urllib3.PoolManager:
        proxy = self.proxy_for(url) or ""
        manager = self._managers.get(proxy)
        if manager is None:
            options: dict[str, Any] = {"num_pools": 4, "maxsize": self.pool_size, "block": False,
                                       "cert_reqs": "CERT_REQUIRED", "ca_certs": self.ca_certs}
            if proxy:
                credentials = urllib3.util.parse_url(proxy).auth  # http://user:password@host:port
                if credentials:
                    options["proxy_headers"] = urllib3.util.make_headers(proxy_basic_auth=credentials)
                manager = urllib3.ProxyManager(proxy, **options)
            else:
                manager = urllib3.PoolManager(**options)
            manager = self._managers.setdefault(proxy, manager)
        return manager

    def _authorization(self, auth: tuple[str, str]) -> str:
        cached = self._auth
        if cached is None or cached[0] != auth:
            header = urllib3.util.make_headers(basic_auth=f"{auth[0]}:{auth[1]}")["authorization"]
            self._auth = cached = (auth, header)
        return cached[1]

    def request(self, method: str, url: str, params: dict[str, object] | None = None,
                data: dict[str, object] | None = None, headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None, timeout: float | None = None,
                allow_redirects: bool = False) -> Response:
        if timeout is None:
            timeout = self.timeout
        elif timeout <= 0:
            raise ValueError(timeout)
        headers = dict(headers or {})
        if auth is not None:
            headers["Authorization"] = self._authorization(auth)
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params, doseq=True)}"
        body: str | None = None
        if data:
            if headers.get("Content-Type") in ("application/json", "application/scim+json"):
                body = json.dumps(data)
            else:
                body = urlencode(data, doseq=True)
        log.debug("Twilio API %s %s", method, url.split("?", 1)[0])
        self._test_only_last_response = None
        answer = self._manager(url).request(
            method.upper(), url, body=body.encode() if body is not None else None, headers=headers,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False, redirect=allow_redirects,
        )
        log.debug("Twilio API answered %s", answer.status)
        response = Response(int(answer.status), answer.data.decode("utf-8", "replace"), answer.headers)
        self._test_only_last_response = response
        return response

    def close(self) -> None:
        for manager in self._managers.values():
            manager.clear()


class TwilioSender:
    """Sends outbox rows with the real twilio REST client (TWILIO_API_BASE_URL honoured)."""

    channels: tuple[str, ...] = ("sms", "whatsapp")

    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        # The SDK over keep-alive urllib3 pools (proxy and CA settings read once): see PooledHttpClient.
        self.http = PooledHttpClient(timeout=timeout)
        self.client = Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=self.http)
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
