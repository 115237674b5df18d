"""Logging set-up: every line, tracebacks included, goes out with phone numbers masked.

The code logs masked addresses only (identity.mask), but a database or provider error can quote a value back:
PostgreSQL's "Key (phone)=(+52…) already exists", a provider's "invalid To number +52…". This formatter is the
net under those: any run of 7 or more digits (with an optional +) keeps its last 4.
"""

from __future__ import annotations

import logging
import re

_NUMBER = re.compile(r"\+?\d[\d ]{5,}\d")
# An access-log request line ("GET /simulator?address=%2B52-55… HTTP/1.1"): its query string can carry a phone
# number in any spelling or a broadcast's text (the composer's live estimate), so it is left out.
_QUERY = re.compile(r'("[A-Z]+ [^ ?"]*)\?[^ "]*( HTTP/[0-9.]+")')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the development server colours its lines, also into files


def redact(text: str) -> str:
    """`text` with every phone-number-like run of digits masked to its last four (+52•••5678), request query
    strings left out and terminal colour codes removed."""
    def mask(match: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", match.group(0))
        if len(digits) < 7:
            return match.group(0)
        return ("+" if match.group(0).startswith("+") else "") + "•••" + digits[-4:]

    return _NUMBER.sub(mask, _QUERY.sub(r"\1?…\2", _ANSI.sub("", text)))


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: str, fmt: str) -> None:
    """logging.basicConfig, then every root handler formats through RedactingFormatter."""
    logging.basicConfig(level=level, format=fmt)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # seven lines at every start
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(fmt))
