"""Tests for bot.keywords: whole-message keywords (es/en), Telegram commands and quiz-answer parsing."""

from __future__ import annotations

import pytest

from bot.keywords import (
    CONFIRM_WORDS,
    KEYWORDS,
    Intent,
    fold,
    normalise,
    parse_choice,
    parse_command,
    parse_keyword,
)

# PRODUCT.md "Conversation", the keyword table, written out as in the contract: (keyword, intent, language).
CONTRACT_TABLE = [
    # opt out
    ("BAJA", Intent.OPT_OUT, "es"),
    ("ALTO", Intent.OPT_OUT, "es"),
    ("PARAR", Intent.OPT_OUT, "es"),
    ("CANCELAR", Intent.OPT_OUT, "es"),
    ("STOP", Intent.OPT_OUT, "en"),
    ("UNSUBSCRIBE", Intent.OPT_OUT, "en"),
    ("END", Intent.OPT_OUT, "en"),
    ("QUIT", Intent.OPT_OUT, "en"),
    ("STOPALL", Intent.OPT_OUT, "en"),
    ("CANCEL", Intent.OPT_OUT, "en"),
    ("OPTOUT", Intent.OPT_OUT, "en"),
    ("REVOKE", Intent.OPT_OUT, "en"),
    # opt in
    ("ALTA", Intent.OPT_IN, "es"),
    ("INICIO", Intent.OPT_IN, "es"),
    ("START", Intent.OPT_IN, "en"),
    ("UNSTOP", Intent.OPT_IN, "en"),
    ("YES", Intent.OPT_IN, "en"),
    # help
    ("AYUDA", Intent.HELP, "es"),
    ("HELP", Intent.HELP, "en"),
    ("INFO", Intent.HELP, "en"),
    # next
    ("SIGUIENTE", Intent.NEXT, "es"),
    ("NEXT", Intent.NEXT, "en"),
    # pause / resume
    ("PAUSA", Intent.PAUSE, "es"),
    ("PAUSE", Intent.PAUSE, "en"),
    ("SEGUIR", Intent.RESUME, "es"),
    ("RESUME", Intent.RESUME, "en"),
    # progress
    ("ESTADO", Intent.STATUS, "es"),
    ("STATUS", Intent.STATUS, "en"),
    # language
    ("ES", Intent.LANG_ES, "es"),
    ("EN", Intent.LANG_EN, "en"),
    ("IDIOMA", Intent.LANGUAGE, "es"),
    ("LANGUAGE", Intent.LANGUAGE, "en"),
    # erase
    ("BORRAR", Intent.DELETE, "es"),
    ("DELETE", Intent.DELETE, "en"),
    # menu
    ("MENU", Intent.MENU, "es"),
    ("CURSOS", Intent.MENU, "es"),
    ("COURSES", Intent.MENU, "en"),
]


@pytest.mark.parametrize(("word", "intent", "language"), CONTRACT_TABLE)
def test_every_contract_keyword_maps_to_its_intent(word: str, intent: Intent, language: str) -> None:
    assert parse_keyword(word) == (intent, language)


@pytest.mark.parametrize(("word", "intent", "language"), CONTRACT_TABLE)
def test_keywords_are_case_insensitive(word: str, intent: Intent, language: str) -> None:
    assert parse_keyword(word.lower()) == (intent, language)
    assert parse_keyword(word.capitalize()) == (intent, language)


def test_the_keyword_table_is_exactly_the_contract() -> None:
    assert {word: (intent, language) for word, intent, language in CONTRACT_TABLE} == KEYWORDS


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("¡Baja!", Intent.OPT_OUT),
        (" stop. ", Intent.OPT_OUT),
        ("Stop!!!", Intent.OPT_OUT),
        ("  STOP \n", Intent.OPT_OUT),
        ("\tbaja\t", Intent.OPT_OUT),
        ("¡¡BAJA!!", Intent.OPT_OUT),
        ("Baja 🙏", Intent.OPT_OUT),
        ('"stop"', Intent.OPT_OUT),
        ("ＳＴＯＰ", Intent.OPT_OUT),  # full-width letters, as some keyboards send them
        ("Menú", Intent.MENU),
        ("MENÚ", Intent.MENU),
        ("menu...", Intent.MENU),
        ("siguiente?", Intent.NEXT),
        ("¿Siguiente?", Intent.NEXT),
        ("Sigüiente", Intent.NEXT),
        ("Ayúda", Intent.HELP),
        ("info?", Intent.HELP),
        ("Inicio.", Intent.OPT_IN),
        ("(alta)", Intent.OPT_IN),
        ("estado!", Intent.STATUS),
        ("Pausa.", Intent.PAUSE),
        ("seguir", Intent.RESUME),
        ("Idioma?", Intent.LANGUAGE),
        ("es", Intent.LANG_ES),
        ("En.", Intent.LANG_EN),
        ("Borrar", Intent.DELETE),
        ("cursos", Intent.MENU),
        ("*HELP*", Intent.HELP),
        ("_next_", Intent.NEXT),
    ],
)
def test_accents_case_spaces_and_punctuation_are_ignored(text: str, intent: Intent) -> None:
    found = parse_keyword(text)
    assert found is not None, text
    assert found[0] is intent


@pytest.mark.parametrize(
    "text",
    [
        "quiero la baja",
        "stop it",
        "please stop",
        "no quiero STOP",
        "stop stop",
        "S.T.O.P",
        "baja por favor",
        "el siguiente",
        "next lesson please",
        "ayuda por favor",
        "help me",
        "menu de cursos",
        "estado del curso",
        "en español",
        "es todo",
        "yes please",
        "I want to start",
        "borrar mis datos",
        "STOPS",
        "BAJAS",
        "ESTO",
        "hola",
        "",
        "   ",
        "!!!",
        "2",
        "b",
    ],
)
def test_a_keyword_inside_a_longer_message_is_no_keyword(text: str) -> None:
    assert parse_keyword(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("¡Baja!", "BAJA"),
        (" stop. ", "STOP"),
        ("Menú", "MENU"),
        ("¿Qué   tal?", "QUE TAL"),
        ("a-b_c", "A B C"),
        ("", ""),
        ("?!", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ñandú", "nandu"),
        ("  Canción   de   CUNA ", "cancion de cuna"),
        ("ÁÉÍÓÚ áéíóú", "aeiou aeiou"),
        ("Straße", "strasse"),
    ],
)
def test_fold(text: str, expected: str) -> None:
    assert fold(text) == expected


@pytest.mark.parametrize(
    ("text", "intent", "arg"),
    [
        ("/help", Intent.HELP, ""),
        ("/HELP", Intent.HELP, ""),
        ("/help@MyBot", Intent.HELP, ""),
        ("  /help  ", Intent.HELP, ""),
        ("/stop", Intent.OPT_OUT, ""),
        ("/stop@MyBot", Intent.OPT_OUT, ""),
        ("/next", Intent.NEXT, ""),
        ("/status", Intent.STATUS, ""),
        ("/lang", Intent.LANGUAGE, ""),
        ("/lang en", Intent.LANGUAGE, "en"),
        ("/menu", Intent.MENU, ""),
        ("/pause", Intent.PAUSE, ""),
        ("/resume", Intent.RESUME, ""),
        ("/delete", Intent.DELETE, ""),
        # /start is no intent of its own: its argument is the course to enrol in.
        ("/start@MyBot x", None, "x"),
        ("/start seguridad", None, "seguridad"),
        ("/start@MyBot   seguridad  ", None, "seguridad"),
        ("/start", None, ""),
        ("/unknown thing", None, "thing"),
        ("/", None, ""),
    ],
)
def test_telegram_commands(text: str, intent: Intent | None, arg: str) -> None:
    assert parse_command(text) == (intent, arg)


@pytest.mark.parametrize("word", ["SI", "YES", "CONFIRMAR", "CONFIRM", "BORRAR", "DELETE"])
def test_confirm_words(word: str) -> None:
    assert word in CONFIRM_WORDS
    assert normalise(word.lower() + "!") in CONFIRM_WORDS


@pytest.mark.parametrize("word", ["NO", "CANCELAR", "S", "Y", "OK"])
def test_not_confirm_words(word: str) -> None:
    assert word not in CONFIRM_WORDS


OPTIONS = ["Verdadero", "Falso", "Depende de la situación"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the option number
        ("1", 1),
        ("2", 2),
        ("3", 3),
        (" 2 ", 2),
        ("2.", 2),
        ("2)", 2),
        ("(2)", 2),
        ("2 )", 2),
        ("2!", 2),
        ("02", 2),
        # the option letter
        ("a", 1),
        ("b", 2),
        ("c", 3),
        ("B", 2),
        ("B)", 2),
        ("b)", 2),
        ("(b)", 2),
        ("(B)", 2),
        ("b.", 2),
        ("b:", 2),
        ("b-", 2),
        (" c ", 3),
        ("¿b?", 2),
        # the option text, case- and accent-insensitive
        ("Verdadero", 1),
        ("verdadero", 1),
        ("VERDADERO", 1),
        ("Verdádero", 1),
        ("falso", 2),
        ("FALSO!", 2),
        ("¡Falso!", 2),
        ("depende de la situacion", 3),
        ("DEPENDE DE LA SITUACIÓN.", 3),
        ("depende  de   la situación", 3),
        # label and option text together
        ("b) Falso", 2),
        ("B) falso", 2),
        ("(b) Falso", 2),
        ("2) Falso", 2),
        ("2. falso", 2),
        ("c) Depende de la situacion", 3),
        ("3 - depende de la situación", 3),
    ],
)
def test_parse_choice_accepts(text: str, expected: int) -> None:
    assert parse_choice(text, OPTIONS) == expected


@pytest.mark.parametrize(
    "text",
    [
        # out of range
        "0",
        "4",
        "9",
        "10",
        "99",
        "d",
        "D)",
        "(z)",
        # a label that does not match the text that follows it
        "a) Falso",
        "2) Verdadero",
        "d) Falso",
        # garbage
        "xyz",
        "no sé",
        "verdad",
        "Verdadero o falso",
        "1 2",
        "ab",
        "123",
        "🙂",
        "??",
        "-",
        # empty
        "",
        " ",
        "   \n ",
    ],
)
def test_parse_choice_rejects(text: str) -> None:
    assert parse_choice(text, OPTIONS) is None


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("Yes", ["Yes", "No"], 1),
        ("no", ["Sí", "No"], 2),
        ("si", ["Sí", "No"], 1),
        ("SÍ", ["Sí", "No"], 1),
        ("b", ["Sí", "No"], 2),
        ("c", ["Sí", "No"], None),
        ("3", ["Sí", "No"], None),
        ("2", [], None),
        ("a", [], None),
        ("1990", ["1951", "1990"], 2),  # a year is option text, not option number 1990
        ("No, nunca", ["Siempre", "No, nunca."], 2),
        ("no nunca", ["Siempre", "No, nunca."], 2),
        ("OIM", ["ACNUR", "OIM", "OIT"], 2),
    ],
)
def test_parse_choice_other_options(text: str, options: list[str], expected: int | None) -> None:
    assert parse_choice(text, options) == expected


def test_parse_choice_letters_go_up_to_the_option_count() -> None:
    options = [f"opción {n}" for n in range(1, 8)]
    assert parse_choice("g", options) == 7
    assert parse_choice("h", options) is None
    assert parse_choice("7", options) == 7
    assert parse_choice("8", options) is None
