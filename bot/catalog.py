"""Loading and checking a folder of courses (`<course-id>/course.yaml` plus `NN-slug.yaml` lessons)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from bot.courses import WEEKDAYS, Catalog, Course, Lesson, Question, Schedule, Text
from bot.keywords import KEYWORDS, normalise
from bot.sms import analyse
from bot.yamlnodes import NULL_TAG, NodeReader, Problem, compose_file, describe, line_of, scalar_value

__all__ = ["Problem", "load_catalog", "render_question_text", "sms_report"]

LANGUAGES = ("es", "en")  # every course and system message exists in both
CHANNELS = ("sms", "whatsapp", "telegram")
DEFAULT_TIMEZONE = "America/Mexico_City"
DEFAULT_PASS_MARK = 0.7
COURSE_KEYS = (
    "title",
    "description",
    "keywords",
    "languages",
    "schedule",
    "timezone",
    "pass_mark",
    "channels",
    "whatsapp_template",
    "whatsapp_buttons",
)
LESSON_KEYS = ("title", "body", "sms", "quiz", "source")
QUESTION_KEYS = ("ask", "options", "answer", "explain")
DAY_SETS = {"daily": tuple(range(7)), "weekdays": tuple(range(5))}

COURSE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # also the Telegram `/start <course-id>` payload
LESSON_FILE = re.compile(r"^\d{2}-[a-z0-9][a-z0-9_-]*\.yaml$")
CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}\Z")  # match(): the whole string, no trailing newline
BAD_LESSON_NAME = "lesson file name must be NN-slug.yaml: two digits, '-', then a-z, 0-9, '-' or '_'"


def load_catalog(directory: str | Path) -> tuple[Catalog, list[Problem]]:
    """Every valid course in `directory`; a course with any problem is left out and its problems returned."""
    root = Path(directory)
    if not root.is_dir():
        return Catalog(), [Problem(str(root), 1, "no such folder of courses")]
    courses: list[Course] = []
    problems: list[Problem] = []
    owners: dict[str, str] = {}  # normalised keyword -> the first course (in folder order) that uses it
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        draft = _CourseDraft(folder)
        course = draft.load()
        for word, (path, line) in draft.keywords.items():
            owner = owners.setdefault(word, folder.name)
            if owner != folder.name:
                draft.problems.append(
                    Problem(path, line, f"keywords: {word!r} is already a keyword of course {owner!r}")
                )
        problems.extend(draft.problems)
        if course is not None and not draft.problems:
            courses.append(course)
    return Catalog(tuple(courses)), problems


def render_question_text(question: Question, language: str) -> str:
    """A quiz question as plain text: the ask, then one `1) option` line per option."""
    lines = [question.ask[language].strip()]
    lines += [f"{number}) {option[language].strip()}" for number, option in enumerate(question.options, 1)]
    return "\n".join(lines)


def sms_report(course: Course) -> list[str]:
    """Encoding, segments and units of every lesson (and, on SMS, quiz question) per channel and language."""
    lines = []
    channels = [channel for channel in course.channels if channel in ("sms", "whatsapp")]
    for lesson in course.lessons:
        name = f"{course.id}/{lesson.slug}"
        for channel in channels:
            for language in course.languages:
                lines.append(_cost_line(f"{name} [{channel} {language}]", lesson.text_for(language, channel)))
        if "sms" in channels:
            for number, question in enumerate(lesson.quiz, 1):
                for language in course.languages:
                    text = render_question_text(question, language)
                    lines.append(_cost_line(f"{name} quiz {number} [sms {language}]", text))
    return lines


def _cost_line(label: str, text: str) -> str:
    info = analyse(text)
    line = f"{label} {info.encoding}, {_count(info.segments, 'segment')}, {_count(info.units, 'unit')}"
    if info.encoding == "UCS-2":
        line += f"; forces UCS-2: {' '.join(info.ucs2_chars)}"
    return line


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


@dataclass
class _CourseDraft:
    """One course folder being read: its problems and the keywords it claims (with where they are)."""

    folder: Path
    problems: list[Problem] = field(default_factory=list)
    keywords: dict[str, tuple[str, int]] = field(default_factory=dict)

    def load(self) -> Course | None:
        folder = self.folder
        if not COURSE_ID.match(folder.name):
            self._folder_problem("course folder name (the course id) may only hold a-z, A-Z, 0-9, '-', '_'")
        settings = None
        if (folder / "course.yaml").is_file():
            settings = self._read_course_file(folder / "course.yaml")
        else:
            self._folder_problem("course folder has no course.yaml")
        languages = settings["languages"] if settings else LANGUAGES
        lessons, lesson_files = [], 0
        for path in sorted(folder.iterdir()):
            if (
                path.name == "course.yaml"
                or path.name.startswith(".")
                or path.suffix not in (".yaml", ".yml")
            ):
                continue
            if not LESSON_FILE.match(path.name):
                self.problems.append(Problem(str(path), 1, BAD_LESSON_NAME))
                continue
            lesson_files += 1
            lessons.append(self._read_lesson(path, languages))
        if not lesson_files:
            self._folder_problem("course folder has no lessons (NN-slug.yaml files)")
        if settings is None or self.problems:
            return None
        return Course(id=folder.name, lessons=tuple(lesson for lesson in lessons if lesson), **settings)

    def _folder_problem(self, message: str) -> None:
        self.problems.append(Problem(str(self.folder), 1, message))

    def _read_course_file(self, path: Path) -> dict[str, Any] | None:
        root, problems = compose_file(path, str(path))
        self.problems += problems
        r = _Reader(str(path), LANGUAGES)
        nodes = r.fields(root, "", COURSE_KEYS, ("title", "keywords")) if root is not None else None
        if nodes is None:
            self.problems += r.problems
            return None
        if "languages" in nodes:
            r.languages = r.course_languages(nodes["languages"], "languages")

        def get(key: str, read: Callable[[Node, str], Any], default: Any) -> Any:
            return read(nodes[key], key) if key in nodes else default

        for word, node in get("keywords", r.keywords, []):
            self.keywords.setdefault(word, (str(path), line_of(node)))
        settings = {
            "title": get("title", r.texts, {}),
            "description": get("description", r.texts, {}),
            "keywords": tuple(self.keywords),
            "languages": r.languages,
            "schedule": get("schedule", r.schedule, Schedule()),
            "timezone": get("timezone", r.timezone, DEFAULT_TIMEZONE),
            "pass_mark": get("pass_mark", r.pass_mark, DEFAULT_PASS_MARK),
            "channels": get("channels", r.channels, CHANNELS),
            "whatsapp_template": get("whatsapp_template", r.template, None),
            "whatsapp_buttons": get("whatsapp_buttons", r.template, None),
        }
        self.problems += sorted(r.problems, key=lambda problem: problem.line)
        return settings

    def _read_lesson(self, path: Path, languages: tuple[str, ...]) -> Lesson | None:
        root, problems = compose_file(path, str(path))
        self.problems += problems
        r = _Reader(str(path), languages)
        nodes = r.fields(root, "", LESSON_KEYS, ("title", "body")) if root is not None else None
        if nodes is None:
            self.problems += r.problems
            return None
        questions = r.items(nodes["quiz"], "quiz") or [] if "quiz" in nodes else []
        quiz = [r.question(item, f"quiz[{number}]") for number, item in enumerate(questions, 1)]
        lesson = Lesson(
            slug=path.stem,
            title=r.texts(nodes["title"], "title") if "title" in nodes else {},
            body=r.texts(nodes["body"], "body") if "body" in nodes else {},
            sms=r.texts(nodes["sms"], "sms", every=False) if "sms" in nodes else {},
            quiz=tuple(question for question in quiz if question is not None),
            source=(r.text(nodes["source"], "source") or "").strip() if "source" in nodes else "",
        )
        self.problems += sorted(r.problems, key=lambda problem: problem.line)
        return None if r.problems else lesson


class _Reader(NodeReader):
    """Reads the course-specific parts of course and lesson files."""

    def question(self, node: Node, where: str) -> Question | None:
        nodes = self.fields(node, where, QUESTION_KEYS, ("ask", "options", "answer"))
        if nodes is None:
            return None
        ask = self.texts(nodes["ask"], f"{where}.ask") if "ask" in nodes else {}
        options = self.options(nodes["options"], f"{where}.options") if "options" in nodes else None
        answer = self.answer(nodes["answer"], f"{where}.answer", options) if "answer" in nodes else None
        explain = self.texts(nodes["explain"], f"{where}.explain") if "explain" in nodes else {}
        return Question(ask=ask, options=tuple(options or ()), answer=answer or 0, explain=explain)

    def answer(self, node: Node, where: str, options: list[Text] | None) -> int | None:
        answer = self.integer(node, where, "the number of the right option")
        if answer is not None and options is not None and not 1 <= answer <= len(options):
            self.report(
                node, where, f"{answer} is out of range: the options are numbered 1 to {len(options)}"
            )
        return answer

    def options(self, node: Node, where: str) -> list[Text] | None:
        items = self.items(node, where)
        if items is None:
            return None
        if len(items) < 2:
            self.report(node, where, f"a question needs at least 2 options, found {len(items)}")
        options: list[Text] = []
        for number, item in enumerate(items, 1):
            label = f"{where}[{number}]"
            if _blank(item):
                self.report(item, label, "empty option")
            option = {} if _blank(item) else self.texts(item, label)
            for earlier, other in enumerate(options, 1):
                same = [
                    lang for lang, text in option.items() if text.strip() and _same(text, other.get(lang, ""))
                ]
                if same:
                    self.report(item, label, f"duplicate of option {earlier} in {same[0]!r}")
                    break
            options.append(option)
        return options

    def course_languages(self, node: Node, where: str) -> tuple[str, ...]:
        found = self.choices(node, where, LANGUAGES, "language")
        if found is None:
            return LANGUAGES
        for language in LANGUAGES:
            if language not in found:
                self.report(
                    node, where, f"missing {language!r}: every course exists in {' and '.join(LANGUAGES)}"
                )
        return found if set(found) == set(LANGUAGES) else LANGUAGES

    def keywords(self, node: Node, where: str) -> list[tuple[str, Node]]:
        """The normalised keywords of a list or of a `{lang: [words]}` mapping, each with its node."""
        entries: list[tuple[str, Node]] = []
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                language = self.language_key(key_node, where) or "?"
                entries += self.text_items(value_node, f"{where}.{language}") or []
        elif isinstance(node, SequenceNode):
            entries = self.text_items(node, where) or []
        else:
            self.report(node, where, f"expected a list of words, got {describe(node)}")
            return []
        if not entries:
            self.report(node, where, "no keywords listed: a course needs at least one")
        words: dict[str, Node] = {}
        for raw, item in entries:
            word = normalise(raw)
            if not word:
                self.report(item, where, f"{raw!r} is empty once spaces and punctuation are dropped")
            elif word in KEYWORDS:
                self.report(
                    item,
                    where,
                    f"{raw!r} collides with the system keyword {word} ({KEYWORDS[word][0].value})",
                )
            else:
                words.setdefault(word, item)
        return list(words.items())

    def schedule(self, node: Node, where: str) -> Schedule:
        nodes = self.fields(node, where, ("days", "at")) or {}
        days: tuple[int, ...] | None = None
        if isinstance(nodes.get("days"), ScalarNode):
            name = (self.text(nodes["days"], f"{where}.days") or "").strip().lower()
            days = DAY_SETS.get(name)
            if days is None:
                self.report(
                    nodes["days"],
                    f"{where}.days",
                    f"expected daily, weekdays or a list like [mon, wed, fri], got {name!r}",
                )
        elif "days" in nodes:
            names = self.choices(nodes["days"], f"{where}.days", WEEKDAYS, "day")
            days = tuple(sorted(WEEKDAYS.index(name) for name in names or ()))
        at = self.clock(nodes["at"], f"{where}.at") if "at" in nodes else None
        return Schedule(days=days or Schedule().days, at=at or Schedule().at)

    def timezone(self, node: Node, where: str) -> str:
        name = self.text(node, where)
        if name is not None and not _known_zone(name):
            self.report(node, where, f"unknown time zone {name!r} (use an IANA name like {DEFAULT_TIMEZONE})")
        return name or DEFAULT_TIMEZONE

    def pass_mark(self, node: Node, where: str) -> float:
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            self.report(
                node, where, f"expected a share above 0 and at most 1 (e.g. 0.7), got {describe(node)}"
            )
            return DEFAULT_PASS_MARK
        return float(value)

    def channels(self, node: Node, where: str) -> tuple[str, ...]:
        return self.choices(node, where, CHANNELS, "channel") or CHANNELS

    def template(self, node: Node, where: str) -> str | None:
        sid = (self.text(node, where) or "").strip()
        if sid and not CONTENT_SID.match(sid):
            self.report(
                node, where, f'expected a Twilio Content SID ("HX" and 32 hex characters), got {sid!r}'
            )
        return sid or None


def _same(text: str, other: str) -> bool:
    """Whether two option texts read the same to a learner answering with the text (case, accents)."""
    return normalise(text) == normalise(other)


def _blank(node: Node) -> bool:
    """True for an option with no text at all: `-`, `- ""` or `- {}` (or only blank texts)."""
    if isinstance(node, ScalarNode):
        return node.tag == NULL_TAG or not node.value.strip()
    if isinstance(node, MappingNode):
        return all(
            isinstance(value, ScalarNode) and (value.tag == NULL_TAG or not value.value.strip())
            for _, value in node.value
        )
    return False


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return not _zones() or name in _zones()
