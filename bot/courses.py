"""The course model: what a course folder on disk means once loaded (pure data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time

Text = dict[str, str]  # language code -> text, e.g. {"es": "…", "en": "…"}

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Question:
    ask: Text
    options: tuple[Text, ...]
    answer: int  # 1-based index into options
    explain: Text = field(default_factory=dict)


@dataclass(frozen=True)
class Lesson:
    slug: str  # file name without extension, e.g. "01-que-es"
    title: Text
    body: Text
    sms: Text = field(default_factory=dict)  # optional shorter SMS text
    quiz: tuple[Question, ...] = ()
    source: str = ""

    def text_for(self, language: str, channel: str) -> str:
        """The lesson text a learner reads on `channel`: the `sms:` text on SMS when present."""
        if channel == "sms" and self.sms.get(language):
            return self.sms[language]
        return f"{self.title[language]}\n\n{self.body[language].strip()}"


@dataclass(frozen=True)
class Schedule:
    days: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)  # weekday numbers, Monday = 0
    at: time = time(9, 0)


@dataclass(frozen=True)
class Course:
    id: str  # folder name
    title: Text
    description: Text
    keywords: tuple[str, ...]  # normalised (upper case, no accents)
    languages: tuple[str, ...]
    schedule: Schedule
    timezone: str
    pass_mark: float
    channels: tuple[str, ...]
    lessons: tuple[Lesson, ...]
    whatsapp_template: str | None = None
    # A twilio/quick-reply Content template: body {{1}}, buttons titled {{2}} {{3}} {{4}} with ids 1 2 3.
    # Questions with up to three options go out with it on WhatsApp; others as numbered text.
    whatsapp_buttons: str | None = None


@dataclass(frozen=True)
class Catalog:
    courses: tuple[Course, ...] = ()

    def get(self, course_id: str) -> Course | None:
        return next((c for c in self.courses if c.id == course_id), None)

    def by_keyword(self, keyword: str) -> Course | None:
        return next((c for c in self.courses if keyword in c.keywords), None)
