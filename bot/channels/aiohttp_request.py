"""python-telegram-bot's network layer on aiohttp: a `telegram.request.BaseRequest` for `Bot(request=...)`.

PTB's `Bot` still builds every call, serialises its parameters, parses the answer and raises `RetryAfter`,
`Forbidden`, `BadRequest` … from the status and body (all in `BaseRequest`); only the HTTP exchange is done
here. PTB documents `BaseRequest` as the place to plug in another asyncio HTTP library.

Why: its default `HTTPXRequest` goes through httpx → httpcore → anyio, about 1 ms of CPU per call against the
local fake Bot API; aiohttp (C HTTP parser, plain asyncio streams) does the same exchange in about 0.25 ms
(bench/telegram.py). Behaviour kept from `HTTPXRequest` as Vereda used it: HTTP/1.1 keep-alive, a bounded
pool, connect/read/write/pool timeouts (TimedOut), transport errors as NetworkError, certifi's CA bundle unless
SSL_CERT_FILE/SSL_CERT_DIR say otherwise, and HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment — read once
per host, not on every request.
"""

from __future__ import annotations

import os
import ssl
import urllib.request
from typing import Any

import aiohttp
from telegram._utils.defaultvalue import DefaultValue
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _ssl_context() -> ssl.SSLContext:
    """The CA store httpx would use: SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile and os.path.isfile(cafile):
        return ssl.create_default_context(cafile=cafile)
    if capath and os.path.isdir(capath):
        return ssl.create_default_context(capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class AiohttpRequest(BaseRequest):
    """Bot API requests over one `aiohttp.ClientSession` (created on the loop that runs the Bot)."""

    __slots__ = ("_connect", "_media_write", "_pool", "_pool_size", "_proxies", "_read", "_session", "_timeouts",
                 "_trust_env", "_write")

    def __init__(self, connection_pool_size: int = 32, read_timeout: float | None = 5.0,
                 write_timeout: float | None = 5.0, connect_timeout: float | None = 5.0,
                 pool_timeout: float | None = 1.0, media_write_timeout: float | None = 20.0,
                 trust_env: bool = True) -> None:
        self._pool_size = connection_pool_size
        self._read, self._write, self._connect, self._pool = read_timeout, write_timeout, connect_timeout, pool_timeout
        self._media_write = media_write_timeout
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}
        self._proxies: dict[str, str | None] = {}  # scheme://host -> proxy URL (None: direct)

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._pool_size, ssl=_ssl_context())
            # trust_env=False: aiohttp would re-read the proxy variables on every request; _proxy() reads
            # them once per host instead.
            # No cookie jar: the Bot API sets no cookies, and a jar is filtered on every request.
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.USER_AGENT},
                                                  cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                                                  raise_for_status=False)

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _timeout(self, read: float | None, write: float | None, connect: float | None,
                 pool: float | None) -> aiohttp.ClientTimeout:
        key = (read, write, connect, pool)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # aiohttp's `connect` covers waiting for a pooled connection and opening a new one; it has no
            # write timeout of its own, so `total` bounds the whole exchange by the sum of the four.
            parts = (read, write, connect, pool)
            timeout = aiohttp.ClientTimeout(
                total=None if None in parts else sum(p for p in parts if p is not None),
                connect=None if connect is None or pool is None else connect + pool,
                sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    def _proxy(self, url: str) -> str | None:
        if not self._trust_env:
            return None
        end = url.find("/", url.find("//") + 2)
        origin = url if end < 0 else url[:end]
        if origin not in self._proxies:
            scheme, _, rest = origin.partition("://")
            host = rest.rsplit("@", 1)[-1].split(":", 1)[0]
            proxies = urllib.request.getproxies()
            proxy = proxies.get(scheme) or proxies.get("all")
            if proxy and not proxy.startswith(("http://", "https://")):
                proxy = None  # socks5:// … : aiohttp speaks HTTP proxies only (httpx needed an extra for socks)
            if proxy and urllib.request.proxy_bypass(host):  # type: ignore[attr-defined]
                proxy = None
            self._proxies[origin] = proxy or None
        return self._proxies[origin]

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         write_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         connect_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE,
                         pool_timeout: ODVInput[float] = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data is not None and request_data.contains_files
        read = self._read if isinstance(read_timeout, DefaultValue) else read_timeout
        write = (self._media_write if files else self._write) if isinstance(write_timeout, DefaultValue) \
            else write_timeout
        connect = self._connect if isinstance(connect_timeout, DefaultValue) else connect_timeout
        pool = self._pool if isinstance(pool_timeout, DefaultValue) else pool_timeout
        data: Any = None
        headers = None
        if request_data is not None:
            if files:
                form = aiohttp.FormData()
                for name, value in request_data.json_parameters.items():
                    form.add_field(name, value)
                for name, (filename, content, mimetype) in request_data.multipart_data.items():
                    form.add_field(name, content, filename=filename, content_type=mimetype)
                data = form
            else:
                data, headers = request_data.url_encoded_parameters().encode(), FORM
        try:
            async with session.request(method, url, data=data, headers=headers, proxy=self._proxy(url),
                                       timeout=self._timeout(read, write, connect, pool)) as response:
                return response.status, await response.read()
        except TimeoutError as error:  # aiohttp.ServerTimeoutError is one too
            raise TimedOut from error
        except aiohttp.ClientError as error:
            raise NetworkError(f"aiohttp.{type(error).__name__}: {error}") from error
