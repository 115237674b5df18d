"""Tests for bot.conversation: the pure conversation core, `respond(LearnerState, Inbound, Context) -> Effects`.

No database: a learner is a `LearnerState` kept between turns, exactly as the services layer would load and
save it, and the courses are built from the dataclasses in bot.courses.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.conversation import Context, Effects, Graded, Inbound, LearnerState, respond
from bot.courses import Catalog, Course, Lesson, Question, Schedule
from bot.messages import TEXTS, say

MEXICO = "America/Mexico_City"
NEW_YORK = "America/New_York"
QUIET = (time(21, 0), time(8, 0))
NOW = datetime(2026, 5, 6, 15, 0, tzinfo=UTC)  # Wednesday 2026-05-06, 09:00 in Mexico City
TOMORROW_9_MX = datetime(2026, 5, 7, 15, 0, tzinfo=UTC)

# -- a small course: lesson 1 with two questions, lesson 2 without a quiz, lesson 3 with one question -------

Q1 = Question(
    ask={"es": "¿Quién está en el centro de la seguridad humana?", "en": "Who is at the centre of human security?"},
    options=(
        {"es": "El Estado", "en": "The state"},
        {"es": "Las personas y sus comunidades", "en": "People and their communities"},
        {"es": "Nadie", "en": "Nobody"},
    ),
    answer=2,
    explain={"es": "Las personas, siempre.", "en": "People, always."},
)
Q2 = Question(
    ask={"es": "¿Migrar es un derecho humano?", "en": "Is migrating a human right?"},
    options=({"es": "Sí", "en": "Yes"}, {"es": "No", "en": "No"}),
    answer=1,
    explain={"es": "Toda persona puede salir de cualquier país.", "en": "Everyone may leave any country."},
)
Q3 = Question(
    ask={"es": "¿A quién llamas en una emergencia?", "en": "Whom do you call in an emergency?"},
    options=({"es": "A nadie", "en": "Nobody"}, {"es": "Al consulado", "en": "The consulate"}),
    answer=2,  # no explanation
)
L1 = Lesson(
    slug="01-que-es",
    title={"es": "¿Qué es la seguridad humana?", "en": "What is human security?"},
    body={"es": "La seguridad humana pone a las personas en el centro.\n",
          "en": "Human security puts people at the centre.\n"},
    sms={"es": "Seguridad humana: las personas están en el centro. Lección breve."},
    quiz=(Q1, Q2),
)
L2 = Lesson(
    slug="02-derechos",
    title={"es": "Tus derechos", "en": "Your rights"},
    body={"es": "Tienes derechos en cualquier país: acceso a salud, a un intérprete y al consulado.",
          "en": "You have rights in any country: health care, an interpreter and your consulate."},
)
L3 = Lesson(
    slug="03-emergencias",
    title={"es": "Emergencias", "en": "Emergencies"},
    body={"es": "Guarda el número de tu consulado.", "en": "Save your consulate's number."},
    quiz=(Q3,),
)
SEGURIDAD = Course(
    id="seguridad",
    title={"es": "Seguridad humana y migración", "en": "Human security and migration"},
    description={"es": "Cinco minutos al día.", "en": "Five minutes a day."},
    keywords=("SEGURIDAD", "SECURITY"),
    languages=("es", "en"),
    schedule=Schedule(),  # daily at 09:00
    timezone=MEXICO,
    pass_mark=0.7,
    channels=("sms", "whatsapp", "telegram"),
    lessons=(L1, L2, L3),
)
SALUD_Q = Question(
    ask={"es": "¿El agua del grifo es segura?", "en": "Is tap water safe?"},
    options=({"es": "Depende del lugar", "en": "It depends"}, {"es": "Siempre", "en": "Always"}),
    answer=1,
)
SALUD = Course(
    id="salud",
    title={"es": "Salud en el camino", "en": "Health on the road"},
    description={"es": "Cuídate.", "en": "Take care."},
    keywords=("SALUD", "HEALTH"),
    languages=("es", "en"),
    schedule=Schedule(),
    timezone=MEXICO,
    pass_mark=0.5,
    channels=("whatsapp", "telegram"),  # not on SMS
    lessons=(Lesson(slug="01-agua", title={"es": "Agua", "en": "Water"},
                    body={"es": "Hierve el agua.", "en": "Boil water."}, quiz=(SALUD_Q,)),),
)
CATALOG = Catalog((SEGURIDAD, SALUD))

ACCENTED = re.compile("[áíóúÁÍÓÚ]")


class Out:
    """An expected reply: equal to any `Outbound` with the same text, choices and kind (other fields ignored)."""

    def __init__(self, text: str, choices: tuple[str, ...] = (), kind: str = "reply") -> None:
        self.text, self.choices, self.kind = text, choices, kind

    def __eq__(self, other: object) -> bool:
        return (getattr(other, "text", None), getattr(other, "choices", None), getattr(other, "kind", None)) == (
            self.text, self.choices, self.kind)

    def __hash__(self) -> int:
        return hash((self.text, self.choices, self.kind))

    def __repr__(self) -> str:
        return f"Out({self.text!r}, {self.choices!r}, {self.kind!r})"


class Chat:
    """One learner talking to the bot: state kept between turns as the services layer would keep it."""

    def __init__(self, channel: str = "whatsapp", catalog: Catalog = CATALOG, now: datetime = NOW,
                 **learner: object) -> None:
        self.channel, self.catalog, self.now = channel, catalog, now
        self.state = LearnerState(is_new=True, **learner)  # type: ignore[arg-type]
        self.history: list[Effects] = []

    def send(self, text: str = "", **inbound: object) -> Effects:
        channel = inbound.pop("channel", self.channel)
        effects = respond(self.state, Inbound(channel=channel, text=text, **inbound),  # type: ignore[arg-type]
                          Context(self.catalog, self.now, QUIET))
        # what a reload from the database gives on the next turn
        self.state.is_new = False
        for enrolment in self.state.enrolments.values():
            enrolment.new, enrolment.lesson_sent = False, False
        self.history.append(effects)
        return effects

    def texts(self, text: str = "", **inbound: object) -> list[str]:
        return [reply.text for reply in self.send(text, **inbound).replies]

    @property
    def enrolment(self):  # type: ignore[no-untyped-def]
        return self.state.enrolments[self.state.current_course or ""]

    def graded(self) -> list[Graded]:
        return [g for effects in self.history for g in effects.graded]


def enrolled(course: str = "SEGURIDAD", **kwargs: object) -> Chat:
    chat = Chat(**kwargs)  # type: ignore[arg-type]
    chat.send(course)
    return chat


def question_text(number: int, total: int, ask: str, language: str = "es") -> str:
    return ("Pregunta {n} de {total}: {ask}" if language == "es" else "Question {n} of {total}: {ask}").format(
        n=number, total=total, ask=ask)


def kinds(effects: Effects) -> list[str]:
    return [reply.kind for reply in effects.replies]


# -- first contact and the menu -----------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["hola", "Hola!", "Hi", "buenas tardes", "???", "1"])
def test_first_message_gets_the_welcome_with_the_numbered_course_menu(first: str) -> None:
    chat = Chat()
    effects = chat.send(first)
    assert effects.replies == [Out(say("welcome", "es", "whatsapp"),
                                        ("Seguridad humana y migración", "Salud en el camino"), "reply")]
    assert effects.replies[0].text.startswith("¡Hola! Soy Vereda")
    assert effects.graded == [] and not effects.opted_out and not effects.erase
    assert chat.state.enrolments == {}


def test_the_menu_lists_only_the_courses_of_the_channel() -> None:
    effects = Chat(channel="sms").send("hola")
    assert effects.replies[0].choices == ("Seguridad humana y migracion",)  # our menu: GSM-7 on SMS


def test_the_menu_is_in_the_learners_language() -> None:
    effects = Chat(language="en").send("hello")
    assert effects.replies == [Out(say("welcome", "en", "whatsapp"),
                                        ("Human security and migration", "Health on the road"))]
    assert effects.replies[0].text.startswith("Hi! I'm Vereda")


def test_no_courses_at_all() -> None:
    effects = Chat(catalog=Catalog()).send("hola")
    assert [r.text for r in effects.replies] == ["Por ahora no hay cursos disponibles. Vuelve a escribir más tarde."]


@pytest.mark.parametrize("word", ["CURSOS", "cursos", "MENU", "Menú", "menu.", "COURSES", "/menu"])
def test_menu_keyword_shows_the_menu(word: str) -> None:
    chat = enrolled()
    effects = chat.send(word)
    assert effects.replies == [Out("Cursos disponibles:", ("Seguridad humana y migración", "Salud en el camino"))]
    assert chat.state.pending == "menu"
    # and a number now picks from that menu, keeping the first enrolment
    effects = chat.send("2")
    assert kinds(effects) == ["reply", "lesson", "question"]
    assert chat.state.current_course == "salud"
    assert set(chat.state.enrolments) == {"seguridad", "salud"}


# -- enrolment ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choose", "course"),
    [
        ("1", SEGURIDAD),
        (" 1. ", SEGURIDAD),
        ("a", SEGURIDAD),
        ("2", SALUD),
        ("b)", SALUD),
        ("salud en el camino", SALUD),
        ("Seguridad humana y migracion", SEGURIDAD),
        ("SEGURIDAD", SEGURIDAD),
        ("seguridad!", SEGURIDAD),
        ("Security", SEGURIDAD),
        ("salud", SALUD),
        ("HEALTH", SALUD),
    ],
)
def test_choosing_a_course_from_the_menu_enrols_and_sends_lesson_1_then_question_1(choose: str,
                                                                                  course: Course) -> None:
    chat = Chat()
    chat.send("hola")
    effects = chat.send(choose)
    lesson = course.lessons[0]
    question = lesson.quiz[0]
    assert effects.replies == [
        Out(f"Te inscribiste en «{course.title['es']}». Aquí va la lección 1 de {len(course.lessons)}."),
        Out(lesson.text_for("es", "whatsapp"), (), "lesson"),
        Out(question_text(1, len(lesson.quiz), question.ask["es"]),
                 tuple(o["es"] for o in question.options), "question"),
    ]
    assert effects.replies[1].text == f"{lesson.title['es']}\n\n{lesson.body['es'].strip()}"
    assert effects.graded == []
    assert chat.state.current_course == course.id
    assert chat.state.pending is None
    enrolment = chat.enrolment
    assert (enrolment.position, enrolment.question, enrolment.state) == (0, 0, "active")
    assert enrolment.channel == "whatsapp"
    # With the quiz open, the next due time is for a reminder: tomorrow at the course hour (09:00 local).
    assert enrolment.next_due_at == NOW + timedelta(days=1)


@pytest.mark.parametrize("keyword", ["SEGURIDAD", "seguridad", "Security.", "¡SEGURIDAD!"])
def test_a_course_keyword_as_the_first_message_enrols_at_once(keyword: str) -> None:
    chat = Chat()
    effects = chat.send(keyword)
    assert kinds(effects) == ["reply", "lesson", "question"]
    assert effects.replies[2].choices == ("El Estado", "Las personas y sus comunidades", "Nadie")
    assert chat.state.current_course == "seguridad"


def test_a_course_keyword_inside_a_sentence_does_not_enrol() -> None:
    chat = Chat()
    chat.send("quiero el curso de seguridad")
    assert chat.state.enrolments == {}


@pytest.mark.parametrize("text", ["", "/start@MyBot seguridad"])
def test_telegram_start_with_a_course_enrols(text: str) -> None:
    chat = Chat(channel="telegram")
    effects = chat.send(text, course_start="seguridad")
    assert kinds(effects) == ["reply", "lesson", "question"]
    assert chat.state.current_course == "seguridad"


@pytest.mark.parametrize("start", ["nada", ""])
def test_telegram_start_without_a_known_course_shows_the_welcome(start: str) -> None:
    chat = Chat(channel="telegram")
    effects = chat.send("", course_start=start)
    assert effects.replies == [Out(say("welcome", "es", "telegram"),
                                   ("Seguridad humana y migración", "Salud en el camino"))]
    assert chat.state.enrolments == {}
    # an enrolled learner pressing Start again gets the menu too, not "not understood"
    chat = enrolled(channel="telegram")
    chat.send("2")
    chat.send("1")
    assert chat.texts("", course_start=start) == [say("welcome", "es", "telegram")]


def test_a_course_not_offered_on_the_channel() -> None:
    chat = Chat(channel="sms")
    assert chat.texts("SALUD") == ["Ese curso no esta disponible en este canal."]
    assert chat.state.enrolments == {}


def test_enrolling_again_mid_quiz_says_so_and_re_asks() -> None:
    chat = enrolled()
    effects = chat.send("seguridad")
    assert effects.replies[0].text == "Ya estás en «Seguridad humana y migración» (lección 1 de 3)."
    assert kinds(effects) == ["reply", "question"]
    assert effects.graded == []


@pytest.mark.parametrize("ref", [None, "menu"])
def test_a_stale_menu_button_out_of_range_is_no_crash(ref: str | None) -> None:
    chat = Chat(channel="telegram")
    chat.send("hola")
    effects = chat.send("", choice=9, ref=ref)
    assert chat.state.enrolments == {}
    assert effects.graded == []
    chat.send("", choice=2, ref=ref)  # a real button press still works
    assert chat.state.current_course == "salud"


# -- answering ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    ["2", "b", "B", "B)", "(b)", "2)", "las personas y sus comunidades", "LAS PERSONAS Y SUS COMUNIDADES",
     "Lás persónas y sus comunidades", "b) Las personas y sus comunidades", " 2 "],
)
def test_a_right_answer(answer: str) -> None:
    chat = enrolled()
    effects = chat.send(answer)
    assert effects.replies == [
        Out("¡Correcto! Las personas, siempre."),
        Out(question_text(2, 2, "¿Migrar es un derecho humano?"), ("Sí", "No"), "question"),
    ]
    assert effects.graded == [Graded("seguridad", 0, 0, 2, True)]
    assert chat.enrolment.question == 1
    assert chat.enrolment.answers == {(0, 0): True}


def test_a_button_press_is_an_answer() -> None:
    chat = enrolled(channel="telegram")
    effects = chat.send("", choice=2)
    assert effects.graded == [Graded("seguridad", 0, 0, 2, True)]
    assert effects.replies[0].text.startswith("¡Correcto!")


def test_a_button_press_counts_once() -> None:
    """Pressing the same button twice, or a button of an older question, grades nothing more."""
    chat = Chat(channel="telegram")
    first = chat.send("seguridad").replies[-1]
    assert first.kind == "question"
    ref = getattr(first, "ref", None)
    assert chat.send("", choice=2, ref=ref).graded == [Graded("seguridad", 0, 0, 2, True)]
    assert chat.send("", choice=2, ref=ref).graded == []  # the second press of the same button
    assert chat.send("", choice=1, ref=ref).graded == []  # another option of the answered question
    assert (chat.enrolment.question, chat.enrolment.answers) == (1, {(0, 0): True})


@pytest.mark.parametrize(("answer", "choice"), [("1", 1), ("c", 3), ("nadie", 3), ("El estado", 1)])
def test_a_wrong_answer_names_the_right_option(answer: str, choice: int) -> None:
    chat = enrolled()
    effects = chat.send(answer)
    assert effects.replies == [
        Out("No es correcto. La respuesta es: 2) Las personas y sus comunidades. Las personas, siempre."),
        Out(question_text(2, 2, "¿Migrar es un derecho humano?"), ("Sí", "No"), "question"),
    ]
    assert effects.graded == [Graded("seguridad", 0, 0, choice, False)]
    assert chat.enrolment.answers == {(0, 0): False}


def test_a_wrong_answer_without_explanation() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    chat.send("SIGUIENTE")  # lesson 2, no quiz
    chat.send("SIGUIENTE")  # lesson 3
    effects = chat.send("1")
    assert effects.replies[0].text == "No es correcto. La respuesta es: 2) Al consulado."


def test_every_answer_is_graded_exactly_once() -> None:
    chat = enrolled()
    for text in ["no sé", "2", "2", "SIGUIENTE", "2", "ESTADO", "SIGUIENTE", "SIGUIENTE", "b", "2", "1"]:
        chat.send(text)
    assert chat.graded() == [
        Graded("seguridad", 0, 0, 2, True),
        Graded("seguridad", 0, 1, 2, False),
        Graded("seguridad", 2, 0, 2, True),
    ]
    assert chat.enrolment.answers == {(0, 0): True, (0, 1): False, (2, 0): True}
    assert chat.enrolment.state == "finished"


@pytest.mark.parametrize("garbage", ["no sé", "quizás", "12", "d", "🙂", "la respuesta correcta"])
def test_an_unparseable_answer_re_asks_gently_and_is_never_graded(garbage: str) -> None:
    chat = enrolled()
    first = chat.send(garbage)
    assert first.replies == [
        Out("No reconocí tu respuesta. Responde con el número (1-3), la letra o el texto de una opción."),
        Out(question_text(1, 2, Q1.ask["es"]), tuple(o["es"] for o in Q1.options), "question"),
    ]
    second = chat.send(garbage)
    assert second.replies == [Out("Responde 1-3, o escribe AYUDA.")]
    third = chat.send(garbage)
    assert [r.text for r in third.replies] == ["Responde 1-3, o escribe AYUDA."]
    assert chat.graded() == []
    assert (chat.enrolment.position, chat.enrolment.question, chat.enrolment.answers) == (0, 0, {})
    # a real answer after the re-asks is graded normally, and the next question starts a fresh count
    assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]
    assert chat.texts("???")[0].startswith("No reconocí tu respuesta. Responde con el número (1-2)")


@pytest.mark.parametrize("text", ["", "   "])
def test_media_only_is_never_graded(text: str) -> None:
    chat = enrolled()
    effects = chat.send(text, media_count=1)
    assert effects.graded == []
    assert effects.replies == [
        Out("Recibí tu archivo, pero solo puedo leer texto."),
        Out(question_text(1, 2, Q1.ask["es"]), tuple(o["es"] for o in Q1.options), "question"),
    ]
    assert (chat.enrolment.question, chat.enrolment.answers) == (0, {})
    assert chat.send(text, media_count=3).graded == []


def test_media_only_as_the_first_message_gets_the_welcome() -> None:
    chat = Chat()
    effects = chat.send("", media_count=1)
    assert [r.text for r in effects.replies] == ["Recibí tu archivo, pero solo puedo leer texto.",
                                                 say("welcome", "es", "whatsapp")]
    assert effects.graded == []


def test_media_only_without_an_open_question() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    effects = chat.send("", media_count=1)
    assert [r.text for r in effects.replies] == ["Recibí tu archivo, pero solo puedo leer texto."]
    assert effects.graded == []


# -- closing a lesson ------------------------------------------------------------------------------------------


def test_after_the_last_question_the_lesson_score_and_when_the_next_lesson_comes() -> None:
    chat = enrolled()
    chat.send("2")
    effects = chat.send("1")
    assert effects.replies == [
        Out("¡Correcto! Toda persona puede salir de cualquier país."),
        Out("Lección 1 terminada: 2 de 2 correctas.\n"
                 "La próxima lección llega mañana a las 09:00. Escribe SIGUIENTE para recibirla ahora."),
    ]
    enrolment = chat.enrolment
    assert enrolment.question is None and enrolment.position == 0 and enrolment.state == "active"
    assert enrolment.next_due_at == TOMORROW_9_MX
    assert enrolment.next_due_at > NOW


def test_the_lesson_score_counts_wrong_answers() -> None:
    chat = enrolled()
    chat.send("1")
    effects = chat.send("2")
    assert effects.replies[-1].text.startswith("Lección 1 terminada: 0 de 2 correctas.\n")


@pytest.mark.parametrize(
    ("learner", "due", "said"),
    [
        ({}, datetime(2026, 5, 7, 15, 0, tzinfo=UTC), "mañana a las 09:00"),  # the course's zone
        ({"timezone": NEW_YORK}, datetime(2026, 5, 7, 13, 0, tzinfo=UTC), "mañana a las 09:00"),
        ({"timezone": "America/Tegucigalpa"}, datetime(2026, 5, 7, 15, 0, tzinfo=UTC), "mañana a las 09:00"),
        ({"timezone": "Europe/Madrid"}, datetime(2026, 5, 7, 7, 0, tzinfo=UTC), "mañana a las 09:00"),
        ({"timezone": NEW_YORK, "preferred_hour": 18}, datetime(2026, 5, 7, 22, 0, tzinfo=UTC),
         "mañana a las 18:00"),
        ({"preferred_hour": 6}, datetime(2026, 5, 7, 14, 0, tzinfo=UTC), "mañana a las 08:00"),  # quiet hours
    ],
)
def test_next_lesson_comes_at_the_course_hour_in_the_learners_zone(learner: dict[str, object], due: datetime,
                                                                   said: str) -> None:
    chat = enrolled(**learner)
    chat.send("2")
    effects = chat.send("1")
    assert chat.enrolment.next_due_at == due
    assert chat.enrolment.next_due_at > NOW
    assert said in effects.replies[-1].text


def test_the_next_lesson_on_a_later_course_day_names_the_day() -> None:
    mwf = replace(SEGURIDAD, schedule=Schedule(days=(0, 2, 4)))  # NOW is a Wednesday: next is Friday
    chat = Chat(catalog=Catalog((mwf,)))
    chat.send("seguridad")
    chat.send("2")
    effects = chat.send("1")
    assert "La próxima lección llega el viernes a las 09:00." in effects.replies[-1].text
    assert chat.enrolment.next_due_at == datetime(2026, 5, 8, 15, 0, tzinfo=UTC)
    en = Chat(catalog=Catalog((mwf,)), language="en")
    en.send("security")
    en.send("2")
    assert "The next lesson comes on Friday at 09:00." in en.send("1").replies[-1].text


def test_a_lesson_without_quiz_closes_at_once_with_the_next_lesson_time() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    effects = chat.send("SIGUIENTE")
    assert effects.replies == [
        Out(L2.text_for("es", "whatsapp"), (), "lesson"),
        Out("La próxima lección llega mañana a las 09:00. Escribe SIGUIENTE para recibirla ahora."),
    ]
    assert chat.enrolment.position == 1 and chat.enrolment.question is None
    assert chat.enrolment.next_due_at == TOMORROW_9_MX
    assert effects.graded == []


def test_a_first_lesson_without_quiz_closes_at_once_on_enrolment() -> None:
    no_quiz_first = replace(SEGURIDAD, lessons=(L2, L1, L3))
    chat = Chat(catalog=Catalog((no_quiz_first,)))
    effects = chat.send("seguridad")
    assert kinds(effects) == ["reply", "lesson", "reply"]
    assert effects.replies[2].text.startswith("La próxima lección llega mañana a las 09:00.")
    assert chat.enrolment.next_due_at == TOMORROW_9_MX


# -- SIGUIENTE ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["SIGUIENTE", "siguiente?", "NEXT", "/next"])
def test_next_during_an_open_question_re_asks_it(word: str) -> None:
    chat = enrolled()
    effects = chat.send(word)
    assert effects.replies == [
        Out("Primero responde la pregunta pendiente:"),
        Out(question_text(1, 2, Q1.ask["es"]), tuple(o["es"] for o in Q1.options), "question"),
    ]
    assert effects.graded == []
    assert (chat.enrolment.position, chat.enrolment.question) == (0, 0)


def test_next_after_the_quiz_delivers_the_next_lesson_at_once() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    assert chat.enrolment.next_due_at is not None
    chat.send("SIGUIENTE")  # lesson 2 (no quiz)
    effects = chat.send("siguiente")
    assert effects.replies == [
        Out(L3.text_for("es", "whatsapp"), (), "lesson"),
        Out(question_text(1, 1, Q3.ask["es"]), ("A nadie", "Al consulado"), "question"),
    ]
    # The quiz of lesson 3 is open: the next due time is a reminder tomorrow at 09:00 local.
    assert (chat.enrolment.position, chat.enrolment.question) == (2, 0)
    assert chat.enrolment.next_due_at == NOW + timedelta(days=1)


def test_next_without_any_course() -> None:
    chat = Chat()
    chat.send("hola")
    effects = chat.send("SIGUIENTE")
    assert [r.text for r in effects.replies] == ["Aún no estás en ningún curso.", "Cursos disponibles:"]


# -- the end of the course -----------------------------------------------------------------------------------------


def finish(chat: Chat, answers: tuple[str, str, str]) -> Effects:
    chat.send(answers[0])
    chat.send(answers[1])
    chat.send("SIGUIENTE")
    chat.send("SIGUIENTE")
    return chat.send(answers[2])


def test_course_passed() -> None:
    chat = enrolled()
    effects = finish(chat, ("2", "1", "2"))
    assert effects.replies == [
        Out("¡Correcto!"),
        Out("Lección 3 terminada: 1 de 1 correctas.\n"
                 "¡Terminaste «Seguridad humana y migración»! Resultado: 100% (3 de 3). Aprobado (mínimo 70%). "
                 "Escribe CURSOS para ver otros cursos."),
    ]
    assert chat.enrolment.state == "finished"
    assert chat.enrolment.next_due_at is None


def test_course_failed() -> None:
    chat = enrolled()
    effects = finish(chat, ("1", "1", "1"))  # 1 of 3 right: 33% < 70%
    assert effects.replies[-1].text == (
        "Lección 3 terminada: 0 de 1 correctas.\n"
        "Terminaste «Seguridad humana y migración». Resultado: 33% (1 de 3). No aprobado (mínimo 70%). "
        "Escribe CURSOS para ver otros cursos."
    )
    assert chat.enrolment.state == "finished"


@pytest.mark.parametrize(
    ("pass_mark", "answers", "passed"),
    [
        (0.7, ("2", "1", "2"), True),  # 3/3
        (0.7, ("2", "2", "2"), False),  # 2/3 = 67% < 70%
        (0.6, ("2", "2", "2"), True),  # 2/3 = 67% >= 60%
        (0.5, ("1", "2", "2"), False),  # 1/3 = 33% < 50%
        (0.5, ("1", "1", "2"), True),  # 2/3 = 67% >= 50%
        (1.0, ("2", "1", "1"), False),
        (0.0, ("1", "2", "1"), True),
    ],
)
def test_pass_or_fail_against_the_pass_mark(pass_mark: float, answers: tuple[str, str, str],
                                            passed: bool) -> None:
    course = replace(SEGURIDAD, pass_mark=pass_mark)
    chat = Chat(catalog=Catalog((course,)))
    chat.send("seguridad")
    text = finish(chat, answers).replies[-1].text
    assert ("Aprobado" in text) is passed
    assert ("No aprobado" in text) is not passed
    assert f"(mínimo {round(pass_mark * 100)}%)" in text


def test_course_score_in_english() -> None:
    chat = enrolled(language="en")
    text = finish(chat, ("b", "a", "b")).replies[-1].text
    assert text == ("Lesson 3 done: 1 of 1 right.\nYou finished “Human security and migration”! Score: 100% "
                    "(3 of 3). Passed (pass mark 70%). Send COURSES to see other courses.")


def test_after_the_course_next_and_the_keyword_say_it_is_done() -> None:
    chat = enrolled()
    finish(chat, ("2", "1", "2"))
    done = "Ya terminaste «Seguridad humana y migración» con 100%. Escribe CURSOS para ver otros."
    assert chat.texts("SIGUIENTE") == [done]
    assert chat.texts("SEGURIDAD") == [done]
    assert chat.graded() == [Graded("seguridad", 0, 0, 2, True), Graded("seguridad", 0, 1, 1, True),
                             Graded("seguridad", 2, 0, 2, True)]


def test_a_last_lesson_without_quiz_ends_the_course() -> None:
    course = replace(SEGURIDAD, lessons=(L1, L3, L2))
    chat = Chat(catalog=Catalog((course,)))
    chat.send("seguridad")
    chat.send("2")
    chat.send("1")
    chat.send("SIGUIENTE")
    chat.send("2")
    effects = chat.send("SIGUIENTE")
    assert kinds(effects) == ["lesson", "reply"]
    assert effects.replies[1].text.startswith("¡Terminaste «Seguridad humana y migración»! Resultado: 100% (3 de 3).")
    assert chat.enrolment.state == "finished"


# -- opting out and in ---------------------------------------------------------------------------------------------

OPT_OUT_WORDS = ["STOP", "stop", " stop. ", "BAJA", "¡Baja!", "ALTO", "PARAR", "CANCELAR", "UNSUBSCRIBE", "END",
                 "QUIT", "STOPALL", "CANCEL", "OPTOUT", "REVOKE", "/stop"]


@pytest.mark.parametrize("word", OPT_OUT_WORDS)
def test_stop_opts_out_with_no_reply(word: str) -> None:
    chat = Chat()
    effects = chat.send(word)
    assert effects.opted_out is True
    assert effects.replies == [] and effects.graded == []
    assert chat.state.opted_out is True


@pytest.mark.parametrize("word", ["STOP", "BAJA"])
def test_stop_mid_quiz_and_mid_confirmation(word: str) -> None:
    chat = enrolled()
    effects = chat.send(word)
    assert (effects.opted_out, effects.replies, effects.graded) == (True, [], [])
    chat = enrolled()
    chat.send("BORRAR")
    effects = chat.send(word)
    assert (effects.opted_out, effects.erase, effects.replies) == (True, False, [])
    assert chat.state.pending is None


@pytest.mark.parametrize(
    ("text", "inbound"),
    [
        ("hola", {}), ("1", {}), ("2", {}), ("b", {}), ("AYUDA", {}), ("HELP", {}), ("SIGUIENTE", {}),
        ("SEGURIDAD", {}), ("ESTADO", {}), ("CURSOS", {}), ("PAUSA", {}), ("SEGUIR", {}), ("EN", {}),
        ("IDIOMA", {}), ("BORRAR", {}), ("SI", {}), ("STOP", {}), ("BAJA", {}), ("", {"media_count": 1}),
        ("", {"choice": 2}), ("/help", {}), ("/next", {}), ("Las personas y sus comunidades", {}),
    ],
)
def test_nothing_is_sent_while_opted_out(text: str, inbound: dict[str, object]) -> None:
    chat = enrolled()
    chat.send("STOP")
    before = (chat.state.language, chat.state.current_course, chat.enrolment.position, chat.enrolment.question,
              dict(chat.enrolment.answers), chat.enrolment.state)
    effects = chat.send(text, **inbound)
    assert effects.replies == []
    assert effects.graded == []
    assert not effects.erase and not effects.opted_in
    assert chat.state.opted_out is True
    after = (chat.state.language, chat.state.current_course, chat.enrolment.position, chat.enrolment.question,
             dict(chat.enrolment.answers), chat.enrolment.state)
    assert after == before


@pytest.mark.parametrize("word", ["START", "start", "ALTA", "¡Alta!", "INICIO", "UNSTOP", "YES", "yes", "Yes!"])
def test_opt_in_while_opted_out(word: str) -> None:
    chat = Chat()
    chat.send("hola")
    chat.send("STOP")
    effects = chat.send(word)
    assert effects.opted_in is True and effects.opted_out is False
    assert chat.state.opted_out is False
    assert effects.replies[0].text == "Volviste a activar los mensajes de Vereda."


def test_opt_in_mid_quiz_asks_the_open_question_again() -> None:
    chat = enrolled()
    chat.send("STOP")
    effects = chat.send("ALTA")
    assert effects.replies == [
        Out("Volviste a activar los mensajes de Vereda."),
        Out(question_text(1, 2, Q1.ask["es"]), tuple(o["es"] for o in Q1.options), "question"),
    ]
    assert effects.graded == []
    assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]


@pytest.mark.parametrize("start", ["", "seguridad"])
def test_telegram_start_opts_back_in(start: str) -> None:
    """A Telegram learner who blocked the bot (opted out) and presses Start again sends `/start`.

    The Telegram adapter passes `/start <arg>` as `course_start=<arg>` with no text.
    """
    chat = enrolled(channel="telegram")
    chat.send("/stop")
    assert chat.state.opted_out is True
    effects = chat.send("", course_start=start)
    assert effects.opted_in is True and chat.state.opted_out is False
    assert effects.replies[0].text == "Volviste a activar los mensajes de Vereda."


@pytest.mark.parametrize("yes", ["YES", "yes", "Yes", "yes.", "Yes!", "yes?", "¡Yes!"])
def test_yes_is_an_answer_not_an_opt_in_while_opted_in(yes: str) -> None:
    chat = enrolled(language="en")
    chat.send("2")  # right, now on "Is migrating a human right?" (Yes / No)
    effects = chat.send(yes)
    assert not effects.opted_in
    assert effects.graded == [Graded("seguridad", 0, 1, 1, True)]
    assert effects.replies[0].text == "Correct! Everyone may leave any country."


def test_yes_outside_a_question_is_no_opt_in() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    effects = chat.send("yes")
    assert not effects.opted_in and not effects.opted_out
    assert [r.text for r in effects.replies] == [say("not_understood", "es", "whatsapp")]


# -- help, status, pause -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("word", "language"), [("AYUDA", "es"), ("ayuda?", "es"), ("/help", "es"),
                                                ("HELP", "en"), ("INFO", "en")])
def test_help(word: str, language: str) -> None:
    chat = Chat(language=language)
    assert chat.texts(word) == [TEXTS["help"][language]]


def test_telegram_texts_name_the_command_a_tap_sends() -> None:
    chat = enrolled(channel="telegram")
    chat.send("2")
    [*_, closing] = chat.texts("1")
    assert closing.endswith("Escribe /next para recibirla ahora.") and "SIGUIENTE" not in closing
    assert chat.texts("PAUSA") == ["Lecciones diarias en pausa. Escribe /resume para continuar."]
    assert "/next" not in say("next_at", "es", "whatsapp", when="mañana")  # other channels keep the keywords


@pytest.mark.parametrize("word", ["/help", "AYUDA"])
def test_help_on_telegram_names_the_slash_commands(word: str) -> None:
    [text] = Chat(channel="telegram").texts(word)
    assert text == TEXTS["help_telegram"]["es"]
    assert all(f"/{command}" in text for command in ("next", "status", "menu", "pause", "resume", "lang", "stop"))


def test_status_lists_progress() -> None:
    chat = enrolled()
    assert chat.texts("ESTADO") == ["«Seguridad humana y migración»: lección 1 de 3."]  # no "0 de 0 correctas"
    chat.send("2")
    chat.send("2")
    assert chat.texts("estado") == ["«Seguridad humana y migración»: lección 1 de 3, 1 de 2 correctas."]
    chat.send("SIGUIENTE")
    chat.send("PAUSA")
    assert chat.texts("ESTADO") == ["«Seguridad humana y migración»: lección 2 de 3, 1 de 2 correctas (en pausa)."]
    chat.send("CURSOS")
    chat.send("2")
    assert chat.texts("STATUS") == [
        "«Seguridad humana y migración»: lección 2 de 3, 1 de 2 correctas (en pausa).\n"
        "«Salud en el camino»: lección 1 de 1."
    ]


def test_status_of_a_finished_course_in_english() -> None:
    chat = enrolled(language="en")
    finish(chat, ("2", "1", "1"))
    assert chat.texts("STATUS") == ["“Human security and migration”: lesson 3 of 3, 2 of 3 right (finished)."]


def test_status_without_a_course_shows_the_menu() -> None:
    chat = Chat()
    effects = chat.send("ESTADO")
    assert [r.text for r in effects.replies] == ["Aún no estás en ningún curso.", "Cursos disponibles:"]
    assert effects.replies[1].choices == ("Seguridad humana y migración", "Salud en el camino")


@pytest.mark.parametrize(("pause", "resume"), [("PAUSA", "SEGUIR"), ("pause", "resume"), ("/pause", "/resume")])
def test_pause_and_resume(pause: str, resume: str) -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    assert chat.texts(pause) == ["Lecciones diarias en pausa. Escribe SEGUIR para continuar."]
    assert chat.enrolment.state == "paused"
    assert chat.texts(resume) == ["Lecciones diarias activadas de nuevo."]
    assert chat.enrolment.state == "active"


def test_resume_while_active_says_so_and_keeps_the_plan() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    due = chat.enrolment.next_due_at
    assert chat.texts("SEGUIR") == ["Tus lecciones diarias ya están activas."]
    assert chat.enrolment.state == "active" and chat.enrolment.next_due_at == due


def test_resume_with_a_quiz_open_asks_the_question_again() -> None:
    chat = enrolled()
    asked = chat.history[-1].replies[-1]  # the lesson's first question
    chat.send("PAUSA")
    chat.enrolment.next_due_at = None  # as the pause after three ignored reminders leaves it
    effects = chat.send("SEGUIR")
    assert [r.text for r in effects.replies] == ["Lecciones diarias activadas de nuevo.", asked.text]
    assert effects.replies[1].choices == asked.choices and effects.replies[1].ref == asked.ref
    assert chat.enrolment.state == "active" and chat.enrolment.reminders == 0
    assert chat.enrolment.next_due_at is not None and chat.enrolment.next_due_at > NOW  # reminders start again
    assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]


def test_resume_without_a_quiz_open_plans_the_next_lesson() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    chat.send("PAUSA")
    chat.enrolment.next_due_at = None
    assert chat.texts("SEGUIR") == ["Lecciones diarias activadas de nuevo."]
    assert chat.enrolment.next_due_at is not None and chat.enrolment.next_due_at > NOW


def test_answering_while_paused_resumes() -> None:
    chat = enrolled()
    chat.send("PAUSA")
    assert chat.enrolment.state == "paused"
    assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]
    assert chat.enrolment.state == "active"


def test_next_while_paused_sends_the_lesson_and_says_the_pause_is_over() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    chat.send("PAUSA")
    texts = chat.texts("SIGUIENTE")
    assert texts[0] == "Lecciones diarias activadas de nuevo."
    assert len(texts) > 1 and chat.enrolment.position == 1 and chat.enrolment.state == "active"


@pytest.mark.parametrize("word", ["SIGUIENTE", "ESTADO", "PAUSA"])
def test_a_course_that_is_gone_is_unavailable_not_unknown(word: str) -> None:
    chat = enrolled()
    chat.catalog = Catalog((SALUD,))  # the course folder failed to load after a restart
    texts = chat.texts(word)
    assert texts[0] == say("course_unavailable", "es", "whatsapp")
    assert "seguridad" in chat.state.enrolments  # nothing lost


def test_pause_without_a_course() -> None:
    assert Chat().texts("PAUSA") == ["Aún no estás en ningún curso."]


def test_pause_keeps_a_finished_course_finished() -> None:
    chat = enrolled()
    finish(chat, ("2", "1", "2"))
    chat.send("PAUSA")
    assert chat.enrolment.state == "finished"


@pytest.mark.parametrize("hello", ["hola", "Hola!", "buenas tardes", "Hello", "¡Buenos días!"])
def test_a_greeting_from_an_enrolled_learner_says_how_to_go_on(hello: str) -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    assert chat.texts(hello) == [
        "¡Hola de nuevo! Escribe SIGUIENTE para la próxima lección, ESTADO para tu progreso o AYUDA."]


def test_a_greeting_with_a_question_open_asks_it_again_and_counts_nothing() -> None:
    chat = enrolled()
    asked = chat.history[-1].replies[-1]
    effects = chat.send("hola")
    assert [r.text for r in effects.replies] == ["¡Hola de nuevo! Te espera esta pregunta:", asked.text]
    assert effects.graded == [] and chat.state.reasks == 0
    assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_an_empty_message_is_not_called_a_file(blank: str) -> None:
    chat = enrolled()
    asked = chat.history[-1].replies[-1]
    effects = chat.send(blank)
    assert [r.text for r in effects.replies] == ["Tu mensaje llegó vacío.", asked.text]
    assert effects.graded == []


def test_the_delete_prompt_does_not_invite_an_opt_out_word() -> None:
    """CANCELAR and CANCEL opt out (PRODUCT.md): the confirmation must not suggest cancelling."""
    for language in ("es", "en"):
        words = {w.strip(".,?¿!").upper() for w in TEXTS["delete_ask"][language].split()}
        assert not words & {"CANCELAR", "CANCELA", "CANCEL", "CANCELS", "STOP", "BAJA"}
    chat = enrolled()
    chat.send("BORRAR")
    assert chat.texts("NO") == ["No se borró nada."]


def test_something_unknown_from_an_enrolled_learner() -> None:
    chat = enrolled()
    chat.send("2")
    chat.send("1")
    assert chat.texts("gracias") == [
        "No entendí. Escribe SIGUIENTE para la próxima lección, ESTADO para tu progreso o AYUDA."
    ]


# -- language -----------------------------------------------------------------------------------------------------


def test_en_switches_language_and_the_next_texts_are_english() -> None:
    chat = enrolled()
    effects = chat.send("EN")
    assert effects.replies == [
        Out("Done: I will write in English."),
        Out(question_text(1, 2, Q1.ask["en"], "en"), tuple(o["en"] for o in Q1.options), "question"),
    ]
    assert chat.state.language == "en"
    assert chat.texts("people and their communities") == [
        "Correct! People, always.", question_text(2, 2, Q2.ask["en"], "en")]
    assert chat.texts("no")[0] == "Not quite. The answer is: 1) Yes. Everyone may leave any country."
    effects = chat.send("NEXT")
    assert effects.replies[0] == Out(L2.text_for("en", "whatsapp"), (), "lesson")
    assert effects.replies[1].text == "The next lesson comes tomorrow at 09:00. Send NEXT to get it now."
    assert chat.texts("es") == ["Listo: te escribiré en español."]
    assert chat.state.language == "es"
    assert chat.texts("AYUDA") == [TEXTS["help"]["es"]]


@pytest.mark.parametrize("choice", ["2", "b", "English", "english", "EN", "inglés", "Ingles"])
def test_idioma_then_a_choice_sets_english(choice: str) -> None:
    chat = Chat()
    effects = chat.send("IDIOMA")
    assert effects.replies == [Out("Elige tu idioma / Choose your language:", ("Español", "English"))]
    assert chat.state.pending == "language"
    assert chat.texts(choice) == ["Done: I will write in English."]
    assert chat.state.language == "en" and chat.state.pending is None
    assert chat.texts("help") == [TEXTS["help"]["en"]]


@pytest.mark.parametrize("choice", ["1", "a", "Español", "espanol", "ES", "Spanish"])
def test_language_then_a_choice_sets_spanish(choice: str) -> None:
    chat = Chat(language="en")
    assert chat.texts("LANGUAGE") == ["Choose your language / Elige tu idioma:"]
    assert chat.texts(choice) == ["Listo: te escribiré en español."]
    assert chat.state.language == "es"


def test_language_button_press() -> None:
    chat = Chat(channel="telegram")
    chat.send("/lang")
    chat.send("", choice=2)
    assert chat.state.language == "en"


def test_language_then_a_slip_asks_the_language_once_more_and_grades_nothing() -> None:
    chat = enrolled()
    chat.send("IDIOMA")
    effects = chat.send("3")  # right after "1) Español 2) English": a slip, not an answer to the open question
    assert effects.graded == [] and chat.state.language == "es"
    [again] = effects.replies
    assert again.text == f"{say('reask', 'es', count=2)}\n{say('language_ask', 'es')}"
    assert again.choices == ("Español", "English") and again.ref == "lang"
    chat.send("2")
    assert chat.state.language == "en" and chat.state.pending is None


def test_language_then_two_misses_is_handled_as_usual() -> None:
    chat = enrolled()
    chat.send("IDIOMA")
    chat.send("3")
    effects = chat.send("3")  # asked twice: now an answer to the open question
    assert chat.state.language == "es" and chat.state.pending is None
    assert effects.graded == [Graded("seguridad", 0, 0, 3, False)]


@pytest.mark.parametrize("slips", [0, 1])
def test_language_then_a_keyword_is_the_keyword(slips: int) -> None:
    chat = enrolled()
    chat.send("IDIOMA")
    for _ in range(slips):
        chat.send("x")
    effects = chat.send("AYUDA")
    assert chat.state.pending is None and [r.text for r in effects.replies] == [say("help", "es")]


def test_a_language_button_from_the_second_ask_counts() -> None:
    chat = enrolled(channel="telegram")
    chat.send("IDIOMA")
    chat.send("3")
    chat.send("", choice=2, ref="lang")
    assert chat.state.language == "en"


@pytest.mark.parametrize("switch", [["EN"], ["LANGUAGE", "2"], ["IDIOMA", "English"]])
def test_a_language_switch_keeps_the_course_menu_open(switch: list[str]) -> None:
    chat = Chat()
    chat.send("hola")  # the welcome and its numbered menu
    for text in switch:
        chat.send(text)
    assert chat.state.language == "en" and chat.state.pending == "menu"
    effects = chat.send("2")  # still the menu's second course, now in English
    assert effects.replies[0].text == say("enrolled", "en", "whatsapp", course="Health on the road", total=1)
    assert chat.state.current_course == "salud"


def test_a_language_switch_without_the_menu_open_does_not_open_it() -> None:
    chat = Chat()
    chat.send("EN")
    assert chat.state.pending is None
    assert chat.send("2").replies[0].text == say("welcome", "en", "whatsapp")


@pytest.mark.parametrize("ask", ["/lang", "/delete"])
def test_telegram_start_after_a_question_of_ours_is_a_fresh_start(ask: str) -> None:
    chat = enrolled(channel="telegram")
    chat.send(ask)
    effects = chat.send("", course_start="")
    texts = [reply.text for reply in effects.replies]
    expected = [say("welcome", "es", "telegram")]
    if ask == "/delete":
        expected.insert(0, say("delete_cancelled", "es", "telegram"))
    assert texts == expected and not effects.erase
    assert chat.state.pending == "menu" and chat.state.language == "es" and effects.graded == []


def test_course_content_follows_the_language() -> None:
    chat = Chat(language="en")
    effects = chat.send("security")
    assert effects.replies[0].text == "You enrolled in “Human security and migration”. Here is lesson 1 of 3."
    assert effects.replies[1].text == "What is human security?\n\nHuman security puts people at the centre."
    assert effects.replies[2].choices == ("The state", "People and their communities", "Nobody")


def test_a_course_without_the_learners_language_uses_its_own() -> None:
    spanish_only = replace(SALUD, languages=("es",))
    chat = Chat(catalog=Catalog((spanish_only,)), language="en")
    effects = chat.send("salud")
    assert effects.replies[0].text.startswith("You enrolled in “Salud en el camino”")  # system text: English
    assert effects.replies[1].text == "Agua\n\nHierve el agua."
    assert effects.replies[2].choices == ("Depende del lugar", "Siempre")


# -- erasing data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("confirm", ["SI", "si", "Sí", "sí.", "¡Sí!", "YES", "yes", "CONFIRMAR", "BORRAR"])
def test_borrar_then_si_erases(confirm: str) -> None:
    chat = enrolled()
    effects = chat.send("BORRAR")
    assert effects.replies == [Out(TEXTS["delete_ask"]["es"])]
    assert not effects.erase
    effects = chat.send(confirm)
    assert effects.erase is True
    assert [r.text for r in effects.replies] == ["Tus datos fueron borrados. Si vuelves a escribir, empezarás de cero."]
    assert effects.graded == []


@pytest.mark.parametrize("other", ["no", "NO", "hola", "2", "b", "nunca", "AYUDA", "ESTADO", "", "S"])
def test_borrar_then_anything_else_cancels(other: str) -> None:
    chat = enrolled()
    chat.send("BORRAR")
    effects = chat.send(other, **({"media_count": 1} if not other else {}))
    assert effects.erase is False
    if other:
        assert [r.text for r in effects.replies] == ["No se borró nada."]
        assert effects.graded == []
        assert chat.state.pending is None
        # the next message is an ordinary one again
        assert chat.send("2").graded == [Graded("seguridad", 0, 0, 2, True)]


def test_delete_in_english() -> None:
    chat = Chat(language="en")
    assert chat.texts("DELETE")[0].startswith("Erase all your data")
    effects = chat.send("yes")
    assert effects.erase is True and not effects.opted_in


# -- SMS: GSM-7-friendly system texts, course content as authored -----------------------------------------------------


@pytest.mark.parametrize("language", ["es", "en"])
@pytest.mark.parametrize("key", sorted(TEXTS))
def test_every_system_text_is_gsm_friendly_on_sms(key: str, language: str) -> None:
    text = say(key, language, "sms")
    assert not ACCENTED.search(text), text
    assert not re.search("[«»“”‘’…–—]", text), text


def system_parts(text: str) -> str:
    """`text` without the course's own wording (which stays as authored)."""
    authored = [SEGURIDAD.title["es"], L1.sms["es"], L2.text_for("es", "sms"), L3.text_for("es", "sms")]
    for question in (Q1, Q2, Q3):
        authored += [question.ask["es"], question.explain.get("es", "")]
        authored += [option["es"] for option in question.options]
    for piece in sorted(filter(None, authored), key=len, reverse=True):
        text = text.replace(piece, "")
    return text


def test_sms_system_texts_carry_no_accents_while_course_content_stays_as_authored() -> None:
    chat = Chat(channel="sms")
    script = ["hola", "1", "ESTADO", "no sé", "otra vez", "", "SIGUIENTE", "2", "AYUDA", "2", "PAUSA", "SEGUIR",
              "SIGUIENTE", "IDIOMA", "1", "xyz", "BORRAR", "no", "SIGUIENTE", "1", "ESTADO", "SIGUIENTE", "CURSOS",
              "SALUD", "BORRAR", "SI"]
    replies: list[Any] = []
    for text in script:
        replies += chat.send(text, media_count=0 if text else 1).replies
    assert len(replies) > 30
    for reply in replies:
        assert not ACCENTED.search(system_parts(reply.text)), reply.text
        for choice in reply.choices:
            assert choice in {"Seguridad humana y migracion", "Español", "English"} | {
                o["es"] for q in (Q1, Q2, Q3) for o in q.options}
    texts = [r.text for r in replies]
    # course content, as authored (accents and all): the SMS text of lesson 1, the question, the options
    assert L1.sms["es"] in texts
    assert "Pregunta 1 de 2: ¿Quién está en el centro de la seguridad humana?" in texts
    assert ("Sí", "No") in [r.choices for r in replies]
    # a course title inside our own wording is ours too: GSM-7 (one ó would make the whole SMS UCS-2)
    assert "Te inscribiste en \"Seguridad humana y migracion\". Aqui va la leccion 1 de 3." in texts
    assert "No reconoci tu respuesta. Responde con el numero (1-3), la letra o el texto de una opcion." in texts
    assert any(t.startswith("Leccion 1 terminada: 1 de 2 correctas.\nLa proxima leccion llega mañana a las 09:00.")
               for t in texts)


def test_sms_uses_the_short_lesson_text() -> None:
    chat = Chat(channel="sms")
    effects = chat.send("seguridad")
    assert effects.replies[1] == Out("Seguridad humana: las personas están en el centro. Lección breve.", (),
                                          "lesson")
    # WhatsApp gets the full lesson
    assert Chat().send("seguridad").replies[1].text.startswith("¿Qué es la seguridad humana?\n\n")


def test_sms_course_result_is_gsm_friendly() -> None:
    chat = enrolled(channel="sms")
    text = finish(chat, ("2", "1", "2")).replies[-1].text
    assert text == ("Leccion 3 terminada: 1 de 1 correctas.\n"
                    "¡Terminaste \"Seguridad humana y migracion\"! Resultado: 100% (3 de 3). Aprobado (minimo 70%). "
                    "Escribe CURSOS para ver otros cursos.")


@pytest.mark.parametrize(
    ("days", "day"),
    [((5,), "sabado"), ((2,), "miércoles"), ((0,), "lunes"), ((4,), "viernes")],
)
def test_sms_weekday_names_are_gsm_friendly(days: tuple[int, ...], day: str) -> None:
    course = replace(SEGURIDAD, schedule=Schedule(days=days))
    chat = Chat(channel="sms", catalog=Catalog((course,)))
    chat.send("seguridad")
    chat.send("2")
    text = chat.send("1").replies[-1].text
    assert f"La proxima leccion llega el {day} a las 09:00." in text  # é is GSM-7, á is not
    assert not ACCENTED.search(text)


def test_whatsapp_keeps_the_accents() -> None:
    course = replace(SEGURIDAD, schedule=Schedule(days=(5,)))
    chat = Chat(catalog=Catalog((course,)))
    chat.send("seguridad")
    chat.send("2")
    assert "La próxima lección llega el sábado a las 09:00." in chat.send("1").replies[-1].text


# -- time -------------------------------------------------------------------------------------------------------------


def test_finishing_late_at_night_local_still_says_tomorrow() -> None:
    late = datetime(2026, 5, 7, 5, 30, tzinfo=UTC)  # 23:30 on Wednesday in Mexico City
    chat = enrolled(now=late)
    chat.send("2")
    text = chat.send("1").replies[-1].text
    assert "mañana a las 09:00" in text
    assert chat.enrolment.next_due_at == datetime(2026, 5, 7, 15, 0, tzinfo=UTC)
    local_due = chat.enrolment.next_due_at.astimezone(ZoneInfo(MEXICO))
    assert (local_due.date().isoformat(), local_due.hour) == ("2026-05-07", 9)
    assert chat.enrolment.next_due_at - late < timedelta(hours=10)


def test_the_bundled_courses_menu_and_status_are_gsm7_on_sms() -> None:
    from pathlib import Path

    from bot.catalog import load_catalog
    from bot.channels.base import numbered
    from bot.sms import analyse

    catalog, problems = load_catalog(Path(__file__).resolve().parents[2] / "lessons")
    assert problems == []
    chat = Chat(channel="sms", catalog=catalog)
    [menu] = chat.send("hola").replies
    assert analyse(numbered(menu.text, menu.choices)).encoding == "GSM-7"
    number = 1 + [c.id for c in catalog.courses if "sms" in c.channels].index("ruta-segura")
    enrolled_replies = chat.send(str(number)).replies
    assert analyse(enrolled_replies[0].text).encoding == "GSM-7"
    [status] = chat.send("ESTADO").replies
    # nothing answered yet: no score to give (no "0 de 0 correctas")
    assert status.text == '"Ruta segura": leccion 1 de 10.'
    assert analyse(status.text).encoding == "GSM-7"


def test_status_of_a_course_with_a_quiz_gives_the_score() -> None:
    chat = enrolled()
    chat.send("2")
    [status] = chat.send("ESTADO").replies
    assert status.text == "«Seguridad humana y migración»: lección 1 de 3, 1 de 1 correctas."
