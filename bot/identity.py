"""Who a message is from: phone numbers to E.164 (one person across SMS and WhatsApp), time zones."""

from __future__ import annotations

import phonenumbers
from phonenumbers import timezone as phone_timezone


class BadAddress(ValueError):
    """An address that is not a phone number we can key a learner by."""


def e164(address: str) -> str:
    """The E.164 form of an SMS or WhatsApp address (`whatsapp:+521…` and `+52…` are one line)."""
    raw = address.strip()
    if raw.lower().startswith("whatsapp:"):
        raw = raw[len("whatsapp:"):].strip()
    try:
        number = phonenumbers.parse(raw if raw.startswith("+") else f"+{raw}", None)
    except phonenumbers.NumberParseException:
        raise BadAddress("not a phone number in international format") from None
    # Mexico dropped the mobile "1" after +52 in 2019, but WhatsApp still reports +521XXXXXXXXXX
    # for many lines: it is the same line as SMS +52XXXXXXXXXX.
    national = str(number.national_number)
    if number.country_code == 52 and len(national) == 11 and national.startswith("1"):
        number.national_number = int(national[1:])
    if not phonenumbers.is_possible_number(number):
        raise BadAddress("not a possible phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def zone_for(phone: str) -> str | None:
    """The number's IANA time zone when its country or area has exactly one, else None."""
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return None
    zones = {z for z in phone_timezone.time_zones_for_number(number) if z != "Etc/Unknown"}
    return zones.pop() if len(zones) == 1 else None


def mask(address: str) -> str:
    """An address safe for logs: only its last 4 characters."""
    return f"…{address[-4:]}" if len(address) > 4 else "…"
