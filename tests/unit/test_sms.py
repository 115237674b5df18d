"""Tests for bot.sms (GSM 03.38 / 3GPP TS 23.038 encoding and segment counting)."""

import pytest

from bot import sms
from bot.sms import GSM7_BASIC, GSM7_EXTENSION, SmsInfo, analyse, is_gsm7, split_segments

ESC = None  # 0x1B: escape to the extension table, not a character

# TS 23.038 section 6.2.1, written out as in the spec: 16 rows (low nibble 0x0..0xF),
# 8 columns (high nibble 0x0..0x7).  Code = column * 16 + row.
SPEC_BASIC_GRID = [
    # 0x00  0x10  0x20  0x30  0x40  0x50  0x60  0x70
    ("@", "Δ", " ", "0", "¡", "P", "¿", "p"),  # 0
    ("£", "_", "!", "1", "A", "Q", "a", "q"),  # 1
    ("$", "Φ", '"', "2", "B", "R", "b", "r"),  # 2
    ("¥", "Γ", "#", "3", "C", "S", "c", "s"),  # 3
    ("è", "Λ", "¤", "4", "D", "T", "d", "t"),  # 4
    ("é", "Ω", "%", "5", "E", "U", "e", "u"),  # 5
    ("ù", "Π", "&", "6", "F", "V", "f", "v"),  # 6
    ("ì", "Ψ", "'", "7", "G", "W", "g", "w"),  # 7
    ("ò", "Σ", "(", "8", "H", "X", "h", "x"),  # 8
    ("Ç", "Θ", ")", "9", "I", "Y", "i", "y"),  # 9
    ("\n", "Ξ", "*", ":", "J", "Z", "j", "z"),  # A
    ("Ø", ESC, "+", ";", "K", "Ä", "k", "ä"),  # B
    ("ø", "Æ", ",", "<", "L", "Ö", "l", "ö"),  # C
    ("\r", "æ", "-", "=", "M", "Ñ", "m", "ñ"),  # D
    ("Å", "ß", ".", ">", "N", "Ü", "n", "ü"),  # E
    ("å", "É", "/", "?", "O", "§", "o", "à"),  # F
]

# TS 23.038 section 6.2.1.1 extension table: the 128-position grid is empty except these codes
# (0x0D CR2 and 0x1B SS2 are control/reserved, not characters).
SPEC_EXTENSION_GRID = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}


def spec_basic_by_code():
    return {col * 16 + row: ch for row, cells in enumerate(SPEC_BASIC_GRID) for col, ch in enumerate(cells)}


# --- tables ---------------------------------------------------------------------------------


def test_spec_grid_is_complete():
    assert len(SPEC_BASIC_GRID) == 16 and all(len(r) == 8 for r in SPEC_BASIC_GRID)
    chars = [c for c in spec_basic_by_code().values() if c is not ESC]
    assert len(chars) == 127 == len(set(chars))


def test_basic_table_matches_spec_grid():
    expected = {c for c in spec_basic_by_code().values() if c is not ESC}
    assert GSM7_BASIC == expected
    assert len(GSM7_BASIC) == 127


def test_basic_table_positions_match_spec_grid():
    by_code = spec_basic_by_code()
    assert len(sms._BASIC_TABLE) == 128
    for code, ch in by_code.items():
        if ch is ESC:
            assert code == 0x1B and sms._BASIC_TABLE[code] not in GSM7_BASIC
        else:
            assert sms._BASIC_TABLE[code] == ch, hex(code)


def test_extension_table_matches_spec_grid():
    assert GSM7_EXTENSION == frozenset(SPEC_EXTENSION_GRID.values())
    assert sms._EXTENSION_TABLE == SPEC_EXTENSION_GRID
    assert not GSM7_EXTENSION & GSM7_BASIC
    assert "\x1b" not in GSM7_BASIC | GSM7_EXTENSION


@pytest.mark.parametrize("ch", list("\f^{}\\[~]|€"))
def test_extension_chars_cost_two_septets(ch):
    info = analyse(ch)
    assert info == SmsInfo("GSM-7", 2, 1, ())


# --- classification -----------------------------------------------------------------------


@pytest.mark.parametrize("ch", list("éñÑ¿¡üÜèàÇØÅßÉΔ@£$¥§¤\n\r"))
def test_gsm_basic_chars(ch):
    assert is_gsm7(ch)
    assert analyse(ch) == SmsInfo("GSM-7", 1, 1, ())


@pytest.mark.parametrize("ch", list("áíóúÁÍÓÚ“”‘’–—…çâ`\t") + ["\x1b", "😀"])
def test_chars_forcing_ucs2(ch):
    assert not is_gsm7(ch)
    info = analyse(ch)
    assert info.encoding == "UCS-2"
    assert info.ucs2_chars == (ch,)


def test_spanish_question_classified():
    assert is_gsm7("¿Qué? ñ ¡Sí") is False  # í
    assert is_gsm7("¿Qué tal? Ñandú no, ñu sí") is False
    assert is_gsm7("¿Qué pasa? ñ ¡Vale! Ü é") is True
    info = analyse("¿Qué pasó? ñ ¡Sí!")
    assert info.encoding == "UCS-2"
    assert info.ucs2_chars == ("ó", "í")
    assert info.units == len("¿Qué pasó? ñ ¡Sí!")


def test_ucs2_chars_distinct_first_seen_order():
    text = "“Mañana”, dijo él… ‘sí’ — ¿está aquí? “Sí”."
    info = analyse(text)
    assert info.encoding == "UCS-2"
    assert info.ucs2_chars == ("“", "”", "…", "‘", "í", "’", "—", "á")
    assert "á" in info.ucs2_chars and "“" in info.ucs2_chars
    for ch in "Mñé¿?":
        assert ch not in info.ucs2_chars


def test_gsm_text_has_no_ucs2_chars():
    assert analyse("Hola, ¿qué tal? 10€ [ok]").ucs2_chars == ()


def test_empty_text():
    assert analyse("") == SmsInfo("GSM-7", 0, 0, ())
    assert split_segments("") == []
    assert is_gsm7("")


# --- GSM-7 boundaries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "segments"), [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)]
)
def test_gsm_boundaries(n, segments):
    text = "a" * n
    info = analyse(text)
    assert info == SmsInfo("GSM-7", n, segments, ())
    pieces = split_segments(text)
    assert len(pieces) == segments and "".join(pieces) == text
    if segments > 1:
        assert all(len(p) <= 153 for p in pieces)


@pytest.mark.parametrize(("n", "units", "segments"), [(80, 160, 1), (81, 162, 2)])
def test_euro_counts_two(n, units, segments):
    info = analyse("€" * n)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", units, segments)


def test_escape_pair_at_boundary_moves_to_next_segment():
    text = "a" * 152 + "€" + "b" * 10  # 164 septets -> concatenated, 153 per segment
    pieces = split_segments(text)
    assert pieces == ["a" * 152, "€" + "b" * 10]  # only 1 septet left: the pair moves
    assert analyse(text) == SmsInfo("GSM-7", 164, 2, ())


def test_escape_pair_that_fits_stays():
    text = "a" * 151 + "€" + "b" * 10  # 163 septets
    assert split_segments(text) == ["a" * 151 + "€", "b" * 10]


def test_escape_pair_under_single_limit_is_one_segment():
    # 152 + 2 = 154 septets still fits a single (non-concatenated) 160-septet message
    assert analyse("a" * 152 + "€") == SmsInfo("GSM-7", 154, 1, ())
    assert split_segments("a" * 152 + "€") == ["a" * 152 + "€"]


def test_extension_only_concatenated_segments():
    # 153 is odd: each segment carries 76 escape pairs (152 septets), one septet unused.
    pieces = split_segments("€" * 153)
    assert [len(p) for p in pieces] == [76, 76, 1]
    assert analyse("€" * 153).segments == 3
    assert analyse("€" * 152).segments == 2


def test_single_message_with_extension_over_160():
    text = "a" * 159 + "€"  # 161 septets
    info = analyse(text)
    assert (info.units, info.segments) == (161, 2)
    assert split_segments(text) == [text[:153], text[153:]]


# --- UCS-2 boundaries ---------------------------------------------------------------------


@pytest.mark.parametrize(("n", "segments"), [(70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)])
def test_ucs2_boundaries(n, segments):
    text = "á" * n
    info = analyse(text)
    assert info == SmsInfo("UCS-2", n, segments, ("á",))
    pieces = split_segments(text)
    assert len(pieces) == segments and "".join(pieces) == text


def test_one_ucs2_char_switches_whole_text():
    text = "a" * 69 + "ó"
    assert analyse(text) == SmsInfo("UCS-2", 70, 1, ("ó",))
    text = "a" * 70 + "ó"
    assert analyse(text).segments == 2
    # the € costs 1 UTF-16 unit once the text is UCS-2
    assert analyse("€" * 70 + "ó").units == 71


def test_emoji_counts_two_units():
    assert analyse("😀") == SmsInfo("UCS-2", 2, 1, ("😀",))
    assert analyse("😀" * 35) == SmsInfo("UCS-2", 70, 1, ("😀",))
    assert analyse("😀" * 35 + "a").segments == 2


def test_surrogate_pair_never_split():
    text = "a" * 66 + "😀" + "b" * 10  # 66 + 2 + 10 = 78 units -> concatenated
    pieces = split_segments(text)
    assert pieces == ["a" * 66, "😀" + "b" * 10]
    assert analyse(text).segments == 2
    assert all(len(p.encode("utf-16-le")) // 2 <= 67 for p in pieces)


def test_emoji_only_segments():
    pieces = split_segments("😀" * 67)  # 134 units; 33 pairs (66 units) per segment
    assert [len(p) for p in pieces] == [33, 33, 1]
    assert analyse("😀" * 67).segments == 3
