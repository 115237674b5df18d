"""Keyword and answer parsing, Spanish and English (pure)."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum


class Intent(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    NEXT = "next"
    PAUSE = "pause"
    RESUME = "resume"
    STATUS = "status"
    LANG_ES = "lang_es"
    LANG_EN = "lang_en"
    LANGUAGE = "language"
    DELETE = "delete"
    MENU = "menu"


# Matched as the whole message after normalise(); the language is the one the keyword belongs to.
KEYWORDS: dict[str, tuple[Intent, str | None]] = {}
_TABLE: dict[Intent, dict[str, tuple[str, ...]]] = {
    Intent.OPT_OUT: {
        "es": ("BAJA", "ALTO", "PARAR", "CANCELAR"),
        "en": ("STOP", "UNSUBSCRIBE", "END", "QUIT", "STOPALL", "CANCEL", "OPTOUT", "REVOKE"),
    },
    Intent.OPT_IN: {"es": ("ALTA", "INICIO"), "en": ("START", "UNSTOP", "YES")},
    Intent.HELP: {"es": ("AYUDA",), "en": ("HELP", "INFO")},
    Intent.NEXT: {"es": ("SIGUIENTE",), "en": ("NEXT",)},
    Intent.PAUSE: {"es": ("PAUSA",), "en": ("PAUSE",)},
    Intent.RESUME: {"es": ("SEGUIR",), "en": ("RESUME",)},
    Intent.STATUS: {"es": ("ESTADO",), "en": ("STATUS",)},
    Intent.LANG_ES: {"es": ("ES",)},
    Intent.LANG_EN: {"en": ("EN",)},
    Intent.LANGUAGE: {"es": ("IDIOMA",), "en": ("LANGUAGE",)},
    Intent.DELETE: {"es": ("BORRAR",), "en": ("DELETE",)},
    Intent.MENU: {"es": ("MENU", "CURSOS"), "en": ("COURSES",)},
}
for _intent, _by_lang in _TABLE.items():
    for _lang, _words in _by_lang.items():
        for _word in _words:
            KEYWORDS[_word] = (_intent, _lang)

# Telegram commands map onto the same intents.
COMMANDS: dict[str, Intent] = {
    "/help": Intent.HELP,
    "/stop": Intent.OPT_OUT,
    "/next": Intent.NEXT,
    "/status": Intent.STATUS,
    "/lang": Intent.LANGUAGE,
    "/menu": Intent.MENU,
    "/pause": Intent.PAUSE,
    "/resume": Intent.RESUME,
    "/delete": Intent.DELETE,
}

# A greeting from someone already in a course: not a keyword, but no "I did not understand" either.
GREETINGS = frozenset({"HOLA", "OLA", "BUENAS", "BUENOS DIAS", "BUENAS TARDES", "BUENAS NOCHES", "HI", "HELLO",
                       "HEY", "GOOD MORNING", "GOOD AFTERNOON", "GOOD EVENING"})
CONFIRM_WORDS = frozenset({"SI", "YES", "CONFIRMAR", "CONFIRM", "BORRAR", "DELETE"})

_PUNCT_OR_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def fold(text: str) -> str:
    """Case- and accent-insensitive form of `text`, inner spacing collapsed, edges trimmed."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(bare.casefold().split())


def normalise(text: str) -> str:
    """The form keywords are compared in: upper case, no accents, no punctuation or spaces at the edges."""
    words = [w for w in _PUNCT_OR_SPACE.split(fold(text)) if w]
    return " ".join(words).upper()


def parse_keyword(text: str) -> tuple[Intent, str | None] | None:
    """The intent (and the keyword's language) when the whole message is a keyword, else None."""
    return KEYWORDS.get(normalise(text))


def parse_command(text: str) -> tuple[Intent | None, str]:
    """A Telegram `/command@bot arg` split into its intent (None if unknown) and argument."""
    head, _, arg = text.strip().partition(" ")
    command = head.split("@", 1)[0].lower()
    return COMMANDS.get(command), arg.strip()


_LETTER = re.compile(r"^\(?([a-z])\s*[).:\-]?$")
_NUMBER = re.compile(r"^\(?(\d{1,2})\s*[).:\-]?$")


def whole_number(raw: str | None, top: int, lowest: int = 1) -> int | None:
    """A number a request carries (a button's option, NumMedia, a page, a row id): ASCII digits only, from
    `lowest` to `top`, else None. "²" and "٣" are digits to str.isdigit() but not to int() or to us."""
    if not (raw and raw.isascii() and raw.isdigit() and len(raw) <= len(str(top))):
        return None
    value = int(raw)
    return value if lowest <= value <= top else None


def parse_choice(text: str, options: list[str]) -> int | None:
    """The 1-based option a reply picks: its number (`2`), letter (`b`, `B)`) or text; None if none."""
    raw = fold(text).strip(" .!¡?¿,;")
    if not raw:
        return None
    number = _NUMBER.match(raw)
    if number:
        value = int(number.group(1))
        return value if 1 <= value <= len(options) else None
    letter = _LETTER.match(raw)
    if letter:
        value = ord(letter.group(1)) - ord("a") + 1
        return value if 1 <= value <= len(options) else None
    wanted = normalise(raw)
    for index, option in enumerate(options, start=1):
        if normalise(option) == wanted:
            return index
    # "b) Option text" or "2. Option text": a label followed by the option's own text.
    labelled = re.match(r"^\(?([a-z]|\d{1,2})\s*[).:\-]\s*(.+)$", raw)
    if labelled:
        label, rest = labelled.groups()
        value = int(label) if label.isdigit() else ord(label) - ord("a") + 1
        if 1 <= value <= len(options) and normalise(options[value - 1]) == normalise(rest):
            return value
    return None
