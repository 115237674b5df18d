"""`vereda chat`: the terminal plays the channel, and reads what a learner writes as that channel's webhook would."""

from __future__ import annotations

import pytest

from bot.catalog import load_catalog
from bot.messages import say
from tests.conftest import LESSONS

CATALOG, _ = load_catalog(LESSONS)
RUTA = CATALOG.get("ruta-segura")


def replies(lines: list[str]) -> list[str]:
    """The bot's messages, each with its continuation lines."""
    out: list[str] = []
    for line in lines:
        if line.startswith("vereda> "):
            out.append(line.removeprefix("vereda> "))
        elif line.startswith("        ") and out:
            out[-1] += "\n" + line.strip()
    return out


def test_chat_on_sms_enrols_with_a_course_keyword(cli) -> None:  # type: ignore[no-untyped-def]
    assert RUTA is not None
    _, lines = cli("chat", input="RUTA\n")
    said = replies(lines)
    assert said[0].startswith(say("enrolled", "es", "sms", course=RUTA.title["es"], total=len(RUTA.lessons))[:20])
    assert "tú> RUTA" in lines


@pytest.mark.parametrize("start", ["/start ruta-segura", "/start@vereda_bot ruta-segura"])
def test_chat_on_telegram_reads_start_with_a_course_as_the_webhook_does(cli, start: str) -> None:  # type: ignore[no-untyped-def]
    assert RUTA is not None
    _, lines = cli("chat", "--channel", "telegram", "--address", "424242", input=f"{start}\n")
    said = replies(lines)
    assert said[0] == say("enrolled", "es", "telegram", course=RUTA.title["es"], total=len(RUTA.lessons))


def test_chat_on_telegram_start_opts_back_in_and_mid_quiz_is_no_answer(cli) -> None:  # type: ignore[no-untyped-def]
    _, lines = cli("chat", "--channel", "telegram", "--address", "434343",
                   input="/start ruta-segura\n/stop\n/start\n/start ruta-segura\n")
    said = replies(lines)
    assert say("welcome_back", "es", "telegram") in said  # /start after /stop: back in, as on Telegram
    assert RUTA is not None
    total = len(RUTA.lessons)
    assert say("already_enrolled", "es", "telegram", course=RUTA.title["es"], position=1, total=total) in said
    assert not any(text.startswith(say("reask", "es", "telegram", count=3)[:15]) for text in said)


def test_chat_on_telegram_help_names_the_slash_commands(cli) -> None:  # type: ignore[no-untyped-def]
    _, lines = cli("chat", "--channel", "telegram", "--address", "444444", input="/help\n")
    assert replies(lines) == [say("help_telegram", "es", "telegram")]


def test_chat_rejects_a_bad_telegram_address(cli) -> None:  # type: ignore[no-untyped-def]
    code, lines = cli("chat", "--channel", "telegram", "--address", "abc", ok=False)
    assert code != 0 and any("chat id is a number" in line for line in lines)


@pytest.mark.parametrize(("channel", "address"), [("telegram", "99999999999999999999999"), ("sms", "notanumber"),
                                                   ("whatsapp", "+1")])
def test_chat_rejects_a_bad_address_before_reading_anything(cli, channel: str, address: str) -> None:  # type: ignore[no-untyped-def]
    code, lines = cli("chat", "--channel", channel, "--address", address, input="hola\n", ok=False)
    assert code == 2 and any("--address" in line for line in lines)
    assert not any(line.startswith("tú>") for line in lines) and "Traceback" not in "\n".join(lines)
