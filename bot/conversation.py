"""The conversation, pure: (learner state, inbound message, catalog, now) -> (new state, effects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time

from bot.courses import Catalog, Course, Lesson, Question
from bot.keywords import CONFIRM_WORDS, GREETINGS, Intent, normalise, parse_choice, parse_command, parse_keyword
from bot.messages import WEEKDAY_NAMES, gsm_friendly, say
from bot.schedule import describe_when, next_lesson_at

LANGUAGE_CHOICES = ("Español", "English")
# `pending` while the language question is open: asked, asked again after a slip, asked over the course menu
ASKING_LANGUAGE = ("language", "language_again", "language_menu")


@dataclass
class Inbound:
    """One message from a learner, as any channel delivers it."""

    channel: str  # sms, whatsapp, telegram
    text: str = ""
    media_count: int = 0
    choice: int | None = None  # a button press already resolved to a 1-based option
    ref: str | None = None  # what the pressed button belonged to (Outbound.ref)
    course_start: str | None = None  # Telegram `/start <course-id>`


@dataclass(frozen=True)
class Outbound:
    """A channel-neutral message: text and, for a question, its options."""

    text: str
    choices: tuple[str, ...] = ()
    kind: str = "reply"  # reply, lesson, question
    ref: str | None = None  # what a button press on this message answers: "q:<course>:<lesson>:<q>", menu, lang
    quick_reply: str | None = None  # the course's WhatsApp quick-reply template, for questions


@dataclass
class EnrolmentState:
    course_id: str
    channel: str
    position: int = 0
    question: int | None = None
    state: str = "active"
    next_due_at: datetime | None = None
    reminders: int = 0
    answers: dict[tuple[int, int], bool] = field(default_factory=dict)  # (lesson, question) -> right
    new: bool = False
    lesson_sent: bool = False  # a lesson went out in this turn


@dataclass
class LearnerState:
    language: str = "es"
    timezone: str | None = None
    preferred_hour: int | None = None
    opted_out: bool = False
    pending: str | None = None
    reasks: int = 0
    current_course: str | None = None
    enrolments: dict[str, EnrolmentState] = field(default_factory=dict)
    is_new: bool = False


@dataclass(frozen=True)
class Graded:
    course_id: str
    lesson: int
    question: int
    choice: int
    correct: bool


@dataclass
class Effects:
    replies: list[Outbound] = field(default_factory=list)
    graded: list[Graded] = field(default_factory=list)
    opted_out: bool = False
    opted_in: bool = False
    erase: bool = False


@dataclass(frozen=True)
class Context:
    catalog: Catalog
    now: datetime
    quiet_hours: tuple[time, time] = (time(21, 0), time(8, 0))


class Turn:
    """One inbound message worked through against one learner's state."""

    def __init__(self, learner: LearnerState, inbound: Inbound, ctx: Context) -> None:
        self.learner, self.inbound, self.ctx = learner, inbound, ctx
        self.effects = Effects()

    # -- helpers -------------------------------------------------------------------------------
    def say(self, key: str, **values: object) -> str:
        return say(key, self.learner.language, self.inbound.channel, **values)

    def reply(self, text: str, choices: tuple[str, ...] = (), kind: str = "reply", ref: str | None = None) -> None:
        self.effects.replies.append(Outbound(text, choices, kind, ref))

    def lang_for(self, course: Course) -> str:
        language = self.learner.language
        return language if language in course.languages else course.languages[0]

    def current(self) -> tuple[Course, EnrolmentState] | None:
        course_id = self.learner.current_course
        enrolment = self.learner.enrolments.get(course_id or "")
        course = self.ctx.catalog.get(course_id or "")
        return (course, enrolment) if course and enrolment else None

    def zone(self, course: Course) -> str:
        return self.learner.timezone or course.timezone

    # -- entry -----------------------------------------------------------------------------------
    def run(self) -> Effects:
        text = self.inbound.text or ""
        intent, keyword_language = self._intent(text)
        if self.learner.opted_out:
            if intent is Intent.OPT_IN or self.inbound.course_start is not None:  # Telegram /start
                self.learner.opted_out = False
                self.effects.opted_in = True
                self.reply(self.say("welcome_back"))
                self._show_where_we_are()
            return self.effects  # opted out: nothing is ever sent
        if intent is Intent.OPT_OUT:
            self.learner.opted_out, self.learner.pending = True, None
            self.effects.opted_out = True
            return self.effects
        no_text = not text.strip() and self.inbound.choice is None and self.inbound.course_start is None
        if no_text or (self.inbound.media_count and intent is None):
            # Media (even with a caption) is acknowledged, never graded; so is a message with nothing in it.
            self._media_only("media_only" if self.inbound.media_count else "empty")
            return self.effects
        if self.inbound.ref is not None and not self._button_is_current():
            return self.effects  # a press on an old question, or a second press: it counts once
        if self.learner.pending and self._pending(text, intent):
            return self.effects
        if intent is not None:
            self._keyword(intent, keyword_language)
            return self.effects
        start = self.inbound.course_start
        course = self.ctx.catalog.get(start) if start else self.ctx.catalog.by_keyword(normalise(text))
        if course is not None:
            self._enrol(course)
        elif self.learner.pending == "menu" and self._menu_choice(text):
            pass
        elif start is not None:  # Telegram /start without a known course, also mid-quiz: never an answer
            self._menu(welcome=True)
        elif self.learner.enrolments and not self.learner.is_new and self._greeting(text):
            pass
        elif self._awaiting_answer():
            self._answer(text)
        elif self.learner.is_new or not self.learner.enrolments or start is not None:
            self._menu(welcome=True)
        else:
            self.reply(self.say("not_understood"))
        return self.effects

    def _intent(self, text: str) -> tuple[Intent | None, str | None]:
        if text.startswith("/"):
            intent, _arg = parse_command(text)
            return intent, None
        found = parse_keyword(text)
        if found is None:
            return None, None
        intent, language = found
        if intent is Intent.OPT_IN and normalise(text) == "YES" and not self.learner.opted_out:
            return None, None  # YES is an opt-in keyword only while opted out
        return intent, language

    def _button_is_current(self) -> bool:
        ref = self.inbound.ref
        if ref == "menu" or ref == "lang":
            return self.learner.pending in (("menu",) if ref == "menu" else ASKING_LANGUAGE)
        found = self.current()
        if found is None or found[1].question is None:
            return False
        course, enrolment = found
        return ref == question_ref(course, enrolment)

    # -- keywords ----------------------------------------------------------------------------------
    def _keyword(self, intent: Intent, _language: str | None) -> None:
        menu_open = self.learner.pending == "menu"
        self.learner.pending = None
        if intent is Intent.HELP:
            self.reply(self.say("help"))
        elif intent in (Intent.MENU, Intent.OPT_IN):
            self._menu(welcome=False)
        elif intent is Intent.NEXT:
            self._next()
        elif intent in (Intent.PAUSE, Intent.RESUME):
            self._pause(intent is Intent.PAUSE)
        elif intent is Intent.STATUS:
            self._status()
        elif intent in (Intent.LANG_ES, Intent.LANG_EN):
            self._set_language("es" if intent is Intent.LANG_ES else "en")
            if menu_open:  # the course menu stays open: its numbers still choose a course
                self.learner.pending = "menu"
        elif intent is Intent.LANGUAGE:
            self.learner.pending = "language_menu" if menu_open else "language"
            self.reply(self.say("language_ask"), LANGUAGE_CHOICES, ref="lang")
        elif intent is Intent.DELETE:
            self.learner.pending = "delete"
            self.reply(self.say("delete_ask"))

    def _pending(self, text: str, intent: Intent | None) -> bool:
        """Handle the answer to a question we asked; False lets the message through as usual."""
        pending, self.learner.pending = self.learner.pending, None
        if self.inbound.course_start is not None:  # Telegram /start: a fresh start, never an answer to us
            if pending == "delete":
                self.reply(self.say("delete_cancelled"))
            return False
        word = normalise(text)
        if pending == "delete":
            if word in CONFIRM_WORDS:
                self.effects.erase = True
                self.reply(self.say("delete_done"))
            else:
                self.reply(self.say("delete_cancelled"))
            return True
        if pending in ASKING_LANGUAGE:
            choice = self.inbound.choice or parse_choice(text, list(LANGUAGE_CHOICES))
            if word in {"ES", "SPANISH", "CASTELLANO", "ESPANOL"}:
                choice = 1
            elif word in {"EN", "INGLES"}:
                choice = 2
            if choice in (1, 2):
                self._set_language("es" if choice == 1 else "en")
                if pending == "language_menu":  # asked with the course menu open: it stays open
                    self.learner.pending = "menu"
                return True
            if pending != "language_again" and intent is None:  # a slip right after the choice: asked once more
                self.learner.pending = "language_again"
                self.reply(f"{self.say('reask', count=2)}\n{self.say('language_ask')}", LANGUAGE_CHOICES,
                           ref="lang")
                return True
            return False  # a keyword, or a second miss: handled as usual
        if pending == "menu":
            self.learner.pending = "menu"  # kept until a course is chosen or something else happens
        return False

    def _set_language(self, language: str) -> None:
        self.learner.language = language
        self.reply(self.say("language_set"))
        if self._awaiting_answer():
            self._send_question(*self.current())  # type: ignore[misc]

    def _menu(self, welcome: bool) -> None:
        courses = self._courses_here()
        if not courses:
            self.reply(self.say("no_courses"))
            return
        self.learner.pending = "menu"
        head = self.say("welcome" if welcome else "menu")
        titles = tuple(c.title.get(self.learner.language) or c.title[c.languages[0]] for c in courses)
        if self.inbound.channel == "sms":  # the menu is our message: GSM-7, not UCS-2 for one accent
            titles = tuple(gsm_friendly(title) for title in titles)
        self.reply(head, titles, ref="menu")

    def _courses_here(self) -> list[Course]:
        return [c for c in self.ctx.catalog.courses if self.inbound.channel in c.channels]

    def _menu_choice(self, text: str) -> bool:
        courses = self._courses_here()
        titles = [c.title.get(self.learner.language) or c.title[c.languages[0]] for c in courses]
        choice = self.inbound.choice or parse_choice(text, titles)
        if choice is None or not 1 <= choice <= len(courses):  # a stale button may be out of range
            return False
        self.learner.pending = None
        self._enrol(courses[choice - 1])
        return True

    def _show_where_we_are(self) -> None:
        if self._awaiting_answer():
            self._send_question(*self.current())  # type: ignore[misc]

    # -- courses -------------------------------------------------------------------------------
    def _enrol(self, course: Course) -> None:
        self.learner.pending = None
        if self.inbound.channel not in course.channels:
            self.reply(self.say("channel_unavailable"))
            return
        language = self.lang_for(course)
        title = course.title[language]
        self.learner.current_course = course.id
        enrolment = self.learner.enrolments.get(course.id)
        if enrolment is not None:
            enrolment.channel = self.inbound.channel
            if enrolment.state == "finished":
                percent, _right, _total = course_score(course, enrolment)
                self.reply(self.say("course_done_already", course=title, percent=percent))
                return
            self.reply(self.say("already_enrolled", course=title, position=enrolment.position + 1,
                                total=len(course.lessons)))
            if enrolment.question is not None:
                self._send_question(course, enrolment)
            return
        enrolment = EnrolmentState(course_id=course.id, channel=self.inbound.channel, new=True)
        self.learner.enrolments[course.id] = enrolment
        self.reply(self.say("enrolled", course=title, total=len(course.lessons)))
        self._deliver(course, enrolment, 0)

    def _deliver(self, course: Course, enrolment: EnrolmentState, index: int) -> None:
        deliver_lesson(self.learner, course, enrolment, index, self.inbound.channel, self.ctx,
                       self.effects.replies)

    def _no_course_text(self) -> str:
        """No course to act on: none yet, or (a course folder that failed to load) none available now."""
        known = any(self.ctx.catalog.get(course_id) for course_id in self.learner.enrolments)
        return self.say("course_unavailable" if self.learner.enrolments and not known else "nothing_enrolled")

    def _next(self) -> None:
        found = self.current()
        if found is None:
            self.reply(self._no_course_text())
            self._menu(welcome=False)
            return
        course, enrolment = found
        if enrolment.state == "finished":
            percent, _r, _t = course_score(course, enrolment)
            title = course.title[self.lang_for(course)]
            self.reply(self.say("course_done_already", course=title, percent=percent))
        elif enrolment.question is not None:
            self.reply(self.say("finish_quiz_first"))
            self._send_question(course, enrolment)
        else:
            if enrolment.state == "paused":  # asking for a lesson ends the pause: say so
                self.reply(self.say("resumed"))
            enrolment.state = "active"
            enrolment.channel = self.inbound.channel
            self._deliver(course, enrolment, enrolment.position + 1)

    def _pause(self, pause: bool) -> None:
        found = self.current()
        if found is None:
            self.reply(self._no_course_text())
            return
        course, enrolment = found
        was_active = enrolment.state == "active"
        if enrolment.state != "finished":
            enrolment.state = "paused" if pause else "active"
            enrolment.reminders = 0
        self.reply(self.say("paused" if pause else "already_active" if was_active else "resumed"))
        if pause or enrolment.state == "finished":
            return
        if enrolment.question is not None:
            # Paused with a quiz open (by PAUSA, or after 3 ignored reminders): the question comes back now,
            # and the reminders start over tomorrow.
            self._send_question(course, enrolment)
            enrolment.next_due_at = next_due(self.learner, course, self.ctx)
        elif enrolment.next_due_at is None:
            enrolment.next_due_at = next_due(self.learner, course, self.ctx)

    def _status(self) -> None:
        lines = []
        for enrolment in self.learner.enrolments.values():
            course = self.ctx.catalog.get(enrolment.course_id)
            if course is None:
                continue
            state = {"paused": "state_paused", "finished": "state_finished"}.get(enrolment.state)
            scored = bool(enrolment.answers)  # nothing answered yet: no "0 of 0 right" to give
            lines.append(self.say(
                "status_line" if scored else "status_line_reading", course=course.title[self.lang_for(course)],
                position=min(enrolment.position + 1, len(course.lessons)), total=len(course.lessons),
                right=sum(enrolment.answers.values()), answered=len(enrolment.answers),
                state=self.say(state) if state else "",
            ))
        if not lines:
            self.reply(self._no_course_text())
            self._menu(welcome=False)
            return
        self.reply("\n".join(lines))

    # -- quiz ------------------------------------------------------------------------------------
    def _awaiting_answer(self) -> bool:
        found = self.current()
        return found is not None and found[1].question is not None and found[1].state != "finished"

    def _send_question(self, course: Course, enrolment: EnrolmentState) -> None:
        send_question(self.learner, course, enrolment, self.inbound.channel, self.effects.replies)

    def _greeting(self, text: str) -> bool:
        """A learner in a course says hello: where they are (the open question), never a wrong answer."""
        if normalise(text) not in GREETINGS:
            return False
        if self._awaiting_answer():
            course, enrolment = self.current()  # type: ignore[misc]
            assert enrolment.question is not None
            options = course.lessons[enrolment.position].quiz[enrolment.question].options
            if parse_choice(text, [o[self.lang_for(course)] for o in options]) is not None:
                return False  # an option that reads like a greeting is an answer
            self.reply(self.say("greeting_question"))
            self._send_question(course, enrolment)
            return True
        self.reply(self.say("greeting_back"))
        return True

    def _media_only(self, key: str = "media_only") -> None:
        self.reply(self.say(key))
        if self._awaiting_answer():
            self._send_question(*self.current())  # type: ignore[misc]
        elif not self.learner.enrolments:
            self._menu(welcome=True)

    def _answer(self, text: str) -> None:
        course, enrolment = self.current()  # type: ignore[misc]
        lesson = course.lessons[enrolment.position]
        assert enrolment.question is not None
        question = lesson.quiz[enrolment.question]
        language = self.lang_for(course)
        choice = self.inbound.choice or parse_choice(text, [o[language] for o in question.options])
        if choice is None or not 1 <= choice <= len(question.options):
            self.learner.reasks += 1
            if self.learner.reasks == 1:
                self.reply(self.say("reask", count=len(question.options)))
                self._send_question(course, enrolment)
            else:
                self.reply(self.say("reask_again", count=len(question.options)))
            return
        self.learner.reasks = 0
        enrolment.state = "active"
        enrolment.reminders = 0
        right = choice == question.answer
        key = (enrolment.position, enrolment.question)
        enrolment.answers[key] = right
        self.effects.graded.append(Graded(course.id, key[0], key[1], choice, right))
        feedback = self.say("right") if right else self.say(
            "wrong", answer=f"{question.answer}) {question.options[question.answer - 1][language]}")
        if question.explain.get(language):
            feedback = f"{feedback} {question.explain[language].strip()}"
        self.reply(feedback)
        if enrolment.question + 1 < len(lesson.quiz):
            enrolment.question += 1
            self._send_question(course, enrolment)
            return
        enrolment.question = None
        finish_lesson(self.learner, course, enrolment, self.inbound.channel, self.ctx, self.effects.replies,
                      scored=True)


def course_score(course: Course, enrolment: EnrolmentState) -> tuple[int, int, int]:
    """(percent, right, total) over every quiz question of the course; first answers only."""
    total = sum(len(lesson.quiz) for lesson in course.lessons)
    right = sum(enrolment.answers.values())
    return (round(100 * right / total) if total else 100), right, total


def question_text(question: Question, language: str, number: int, total: int, channel: str) -> str:
    return say("question", language, channel, n=number, total=total, ask=question.ask[language].strip())


def send_question(learner: LearnerState, course: Course, enrolment: EnrolmentState, channel: str,
                  out: list[Outbound]) -> None:
    """Append the question the enrolment waits on."""
    language = learner.language if learner.language in course.languages else course.languages[0]
    lesson: Lesson = course.lessons[enrolment.position]
    assert enrolment.question is not None
    question = lesson.quiz[enrolment.question]
    text = question_text(question, language, enrolment.question + 1, len(lesson.quiz), channel)
    options = tuple(o[language].strip() for o in question.options)
    out.append(Outbound(text, options, "question", question_ref(course, enrolment), course.whatsapp_buttons))


def question_ref(course: Course, enrolment: EnrolmentState) -> str:
    """Names the open question, so that a button press on an older one can be told apart."""
    return f"q:{course.id}:{enrolment.position}:{enrolment.question}"


def deliver_lesson(learner: LearnerState, course: Course, enrolment: EnrolmentState, index: int,
                   channel: str, ctx: Context, out: list[Outbound]) -> None:
    """Append lesson `index` and its first question (or its closing line when it has no quiz)."""
    language = learner.language if learner.language in course.languages else course.languages[0]
    lesson = course.lessons[index]
    enrolment.position, enrolment.question, enrolment.reminders = index, None, 0
    enrolment.lesson_sent, enrolment.next_due_at = True, None
    learner.reasks = 0
    out.append(Outbound(lesson.text_for(language, channel), (), "lesson"))
    if lesson.quiz:
        enrolment.question = 0
        send_question(learner, course, enrolment, channel, out)
        # If the quiz is still open at the next lesson time, a reminder goes out instead.
        enrolment.next_due_at = next_due(learner, course, ctx)
    else:
        finish_lesson(learner, course, enrolment, channel, ctx, out, scored=False)


MAX_REMINDERS = 3


def next_due(learner: LearnerState, course: Course, ctx: Context) -> datetime:
    """The learner's next lesson time: tomorrow (or the next course day) at their hour, out of quiet hours."""
    zone = learner.timezone or course.timezone
    return next_lesson_at(ctx.now, zone, course.schedule, ctx.quiet_hours, learner.preferred_hour)


def remind(learner: LearnerState, course: Course, enrolment: EnrolmentState, channel: str, ctx: Context,
           out: list[Outbound]) -> None:
    """A day passed with the quiz open: remind once a day; after 3 ignored reminders, pause and say so."""
    language = learner.language if learner.language in course.languages else course.languages[0]
    title = course.title[language]
    if enrolment.reminders >= MAX_REMINDERS:
        enrolment.state, enrolment.next_due_at = "paused", None
        out.append(Outbound(say("paused_after_reminders", language, channel, course=title)))
        return
    enrolment.reminders += 1
    out.append(Outbound(say("reminder", language, channel, course=title)))
    send_question(learner, course, enrolment, channel, out)
    enrolment.next_due_at = next_due(learner, course, ctx)


def finish_lesson(learner: LearnerState, course: Course, enrolment: EnrolmentState, channel: str,
                  ctx: Context, out: list[Outbound], scored: bool) -> None:
    """Close the current lesson: its score, then when the next one comes, or the course result."""
    language = learner.language if learner.language in course.languages else course.languages[0]
    lesson = course.lessons[enrolment.position]
    number = enrolment.position + 1
    if scored:
        right = sum(v for (les, _q), v in enrolment.answers.items() if les == enrolment.position)
        line = say("lesson_score", language, channel, n=number, right=right, total=len(lesson.quiz))
    else:
        line = ""
    if enrolment.position + 1 >= len(course.lessons):
        enrolment.state, enrolment.next_due_at = "finished", None
        percent, right_all, total_all = course_score(course, enrolment)
        key = "course_passed" if percent >= round(course.pass_mark * 100) else "course_failed"
        result = say(key, language, channel, course=course.title[language], percent=percent,
                     right=right_all, total=total_all, mark=round(course.pass_mark * 100))
        out.append(Outbound(f"{line}\n{result}".strip()))
        return
    zone = learner.timezone or course.timezone
    due = next_due(learner, course, ctx)
    enrolment.next_due_at = due
    when_key, values = describe_when(due, ctx.now, zone)
    if "weekday" in values:
        day = WEEKDAY_NAMES[language][int(values.pop("weekday"))]
        values["day"] = gsm_friendly(day) if channel == "sms" else day  # our wording: GSM-7 on SMS
    when = say(when_key, language, channel, **values)
    out.append(Outbound(f"{line}\n{say('next_at', language, channel, when=when)}".strip()))


def respond(learner: LearnerState, inbound: Inbound, ctx: Context) -> Effects:
    """Work one inbound message through the conversation; `learner` is updated in place."""
    return Turn(learner, inbound, ctx).run()
