"""Tests for bot.catalog: loading course folders and reporting every problem as `file:line: message`."""

from datetime import time
from pathlib import Path
from textwrap import dedent

import pytest

from bot.catalog import Problem, load_catalog, render_question_text, sms_report
from bot.courses import Course, Lesson, Question, Schedule

SAMPLE = Path(__file__).parent.parent / "fixtures" / "courses" / "sample"

COURSE = """\
title: {es: "Curso", en: "Course"}
keywords: [ALFA]
"""
LESSON = """\
title: {es: "Uno", en: "One"}
body: {es: "Hola.", en: "Hello."}
"""
QUIZ = """\
title: {es: "Uno", en: "One"}
body: {es: "Hola.", en: "Hello."}
quiz:
  - ask: {es: "¿Sí?", en: "Yes?"}
    options:
      - {es: "Sí", en: "Yes"}
      - {es: "No", en: "No"}
    answer: 1
"""


def write(root: Path, files: dict[str, str | None]) -> None:
    """Write `files` (path -> text; None makes an empty folder) under `root`."""
    for name, text in files.items():
        path = root / name
        if text is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")


def course(course_yaml: str | None = COURSE, lessons: dict[str, str] | None = None) -> dict[str, str | None]:
    """The files of course folder `alfa`: course.yaml (omitted when None) and its lessons."""
    files: dict[str, str | None] = {"alfa": None}
    if course_yaml is not None:
        files["alfa/course.yaml"] = course_yaml
    for name, text in (lessons if lessons is not None else {"01-uno.yaml": LESSON}).items():
        files[f"alfa/{name}"] = text
    return files


def lesson(text: str) -> dict[str, str | None]:
    return course(lessons={"01-uno.yaml": text})


def quiz(question: str) -> dict[str, str | None]:
    """A lesson whose quiz is the one question given (YAML indented for the `quiz:` list)."""
    return lesson(LESSON + "quiz:\n" + dedent(question))


@pytest.fixture
def load(tmp_path, monkeypatch):
    """Write the files under tmp_path/courses and load them; problem paths start with `courses/`."""
    monkeypatch.chdir(tmp_path)

    def run(files: dict[str, str | None]):
        write(tmp_path / "courses", files)
        return load_catalog("courses")

    return run


C = "courses/alfa/course.yaml"
L = "courses/alfa/01-uno.yaml"
COURSE_KEYS = (
    "title, description, keywords, languages, schedule, timezone, pass_mark, channels, "
    "whatsapp_template, whatsapp_buttons"
)

CASES = [
    # --- YAML itself
    (
        "syntax error",
        lesson('title: {es: "Uno", en: "One"\nbody: {es: "Hola.", en: "Hello."}\n'),
        [
            f"{L}:2: YAML syntax error: expected ',' or '}}', but got '<scalar>' "
            "(while parsing a flow mapping from line 1)"
        ],
    ),
    (
        "syntax error in an indented block",
        lesson('title: {es: "Uno", en: "One"}\nbody:\n  es: "Hola"\n   en: "Hello"\n'),
        [
            f"{L}:4: YAML syntax error: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping from line 3)"
        ],
    ),
    ("empty file", lesson(""), [f"{L}:1: the file is empty"]),
    ("top level is a list", lesson("- title\n- body\n"), [f"{L}:1: expected a mapping, got a list"]),
    (
        "duplicate key",
        lesson(LESSON + 'title: {es: "Dos", en: "Two"}\n'),
        [f"{L}:3: duplicate key 'title'"],
    ),
    # --- keys
    (
        "unknown course key",
        course(COURSE + "colour: blue\n"),
        [f"{C}:3: unknown key 'colour' (allowed: {COURSE_KEYS})"],
    ),
    (
        "unknown lesson key",
        lesson(LESSON + "video: x.mp4\n"),
        [f"{L}:3: unknown key 'video' (allowed: title, body, sms, quiz, source)"],
    ),
    (
        "unknown question key",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: 1
              hint: {es: "…", en: "…"}
        """),
        [f"{L}:7: quiz[1]: unknown key 'hint' (allowed: ask, options, answer, explain)"],
    ),
    (
        "unknown schedule key",
        course(COURSE + "schedule: {days: daily, hour: 9}\n"),
        [f"{C}:3: schedule: unknown key 'hour' (allowed: days, at)"],
    ),
    ("missing course title", course("keywords: [ALFA]\n"), [f"{C}:1: missing required key 'title'"]),
    (
        "missing keywords",
        course('# comment\ntitle: {es: "Curso", en: "Course"}\n'),
        [f"{C}:2: missing required key 'keywords'"],
    ),
    (
        "missing lesson body",
        lesson('title: {es: "Uno", en: "One"}\n'),
        [f"{L}:1: missing required key 'body'"],
    ),
    (
        "missing answer",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
        """),
        [f"{L}:4: quiz[1]: missing required key 'answer'"],
    ),
    # --- languages
    (
        "missing language in title",
        lesson('title: {es: "Uno"}\nbody: {es: "Hola.", en: "Hello."}\n'),
        [f"{L}:1: title: missing language 'en'"],
    ),
    (
        "empty language in body",
        lesson('title: {es: "Uno", en: "One"}\nbody:\n  es: "Hola."\n  en: ""\n'),
        [f"{L}:4: body.en: empty text"],
    ),
    (
        "blank block body",
        lesson('title: {es: "Uno", en: "One"}\nbody:\n  es: |\n    Hola.\n  en:\n'),
        [f"{L}:5: body.en: empty text"],
    ),
    (
        "unknown language",
        lesson('title: {es: "Uno", en: "One", fr: "Un"}\nbody: {es: "Hola.", en: "Hello."}\n'),
        [f"{L}:1: title: unknown language 'fr' (allowed: es, en)"],
    ),
    (
        "missing language in ask, option and explain",
        quiz("""\
            - ask: {es: "¿Sí?"}
              options:
                - {es: "Sí", en: "Yes"}
                - {es: "No"}
              answer: 1
              explain: {en: "Because."}
        """),
        [
            f"{L}:4: quiz[1].ask: missing language 'en'",
            f"{L}:7: quiz[1].options[2]: missing language 'en'",
            f"{L}:9: quiz[1].explain: missing language 'es'",
        ],
    ),
    (
        "empty sms text",
        lesson(LESSON + 'sms: {es: "Corto.", en: " "}\n'),
        [f"{L}:3: sms.en: empty text"],
    ),
    (
        "sms in an unknown language",
        lesson(LESSON + 'sms: {pt: "Olá"}\n'),
        [f"{L}:3: sms: unknown language 'pt' (allowed: es, en)"],
    ),
    (
        "course without english",
        course(COURSE + "languages: [es]\n"),
        [f"{C}:3: languages: missing 'en': every course exists in es and en"],
    ),
    (
        "unsupported course language",
        course(COURSE + "languages: [es, en, fr]\n"),
        [f"{C}:3: languages: unknown language 'fr' (allowed: es, en)"],
    ),
    # --- quiz
    (
        "empty options",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options:
                - {es: "Sí", en: "Yes"}
                - {}
                - ""
                -
                - {es: "", en: ""}
              answer: 1
        """),
        [
            f"{L}:7: quiz[1].options[2]: empty option",
            f"{L}:8: quiz[1].options[3]: empty option",
            f"{L}:9: quiz[1].options[4]: empty option",
            f"{L}:10: quiz[1].options[5]: empty option",
        ],
    ),
    (
        "one option",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options:
                - {es: "Sí", en: "Yes"}
              answer: 1
        """),
        [f"{L}:6: quiz[1].options: a question needs at least 2 options, found 1"],
    ),
    (
        "answer out of range",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: 3
            - ask: {es: "¿No?", en: "No?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: 0
        """),
        [
            f"{L}:6: quiz[1].answer: 3 is out of range: the options are numbered 1 to 2",
            f"{L}:9: quiz[2].answer: 0 is out of range: the options are numbered 1 to 2",
        ],
    ),
    (
        "answer not an integer",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: b
            - ask: {es: "¿No?", en: "No?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: 1.5
            - ask: {es: "¿Y?", en: "And?"}
              options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
              answer: "2"
        """),
        [
            f"{L}:6: quiz[1].answer: expected the number of the right option, got 'b'",
            f"{L}:9: quiz[2].answer: expected the number of the right option, got 1.5",
            f"{L}:12: quiz[3].answer: expected the number of the right option, got '2'",
        ],
    ),
    (
        "duplicate options",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options:
                - {es: "Sí", en: "Yes"}
                - {es: "No", en: "No"}
                - {es: "si", en: "Yes, sure"}
              answer: 1
        """),
        [f"{L}:8: quiz[1].options[3]: duplicate of option 1 in 'es'"],
    ),
    # --- course settings
    (
        "bad schedule days",
        course(COURSE + "schedule: {days: weekly}\n"),
        [f"{C}:3: schedule.days: expected daily, weekdays or a list like [mon, wed, fri], got 'weekly'"],
    ),
    (
        "unknown day",
        course(COURSE + "schedule: {days: [mon, lun]}\n"),
        [f"{C}:3: schedule.days: unknown day 'lun' (allowed: mon, tue, wed, thu, fri, sat, sun)"],
    ),
    (
        "bad schedule time",
        course(COURSE + 'schedule: {at: "25:00"}\n'),
        [f"{C}:3: schedule.at: expected a 24-hour time like \"09:00\", got '25:00'"],
    ),
    (
        "schedule time in words",
        course(COURSE + "schedule:\n  days: daily\n  at: 9am\n"),
        [f"{C}:5: schedule.at: expected a 24-hour time like \"09:00\", got '9am'"],
    ),
    (
        "schedule not a mapping",
        course(COURSE + "schedule: daily\n"),
        [f"{C}:3: schedule: expected a mapping, got 'daily'"],
    ),
    (
        "unknown timezone",
        course(COURSE + "timezone: America/Mexico\n"),
        [f"{C}:3: timezone: unknown time zone 'America/Mexico' (use an IANA name like America/Mexico_City)"],
    ),
    (
        "pass_mark above 1",
        course(COURSE + "pass_mark: 1.5\n"),
        [f"{C}:3: pass_mark: expected a share above 0 and at most 1 (e.g. 0.7), got 1.5"],
    ),
    (
        "pass_mark zero",
        course(COURSE + "pass_mark: 0\n"),
        [f"{C}:3: pass_mark: expected a share above 0 and at most 1 (e.g. 0.7), got 0"],
    ),
    (
        "pass_mark as a percentage",
        course(COURSE + "pass_mark: 70%\n"),
        [f"{C}:3: pass_mark: expected a share above 0 and at most 1 (e.g. 0.7), got '70%'"],
    ),
    (
        "unknown channel",
        course(COURSE + "channels: [sms, email]\n"),
        [f"{C}:3: channels: unknown channel 'email' (allowed: sms, whatsapp, telegram)"],
    ),
    ("no channels", course(COURSE + "channels: []\n"), [f"{C}:3: channels: no channels listed"]),
    (
        "bad whatsapp template",
        course(COURSE + "whatsapp_template: HX123\n"),
        [
            f"{C}:3: whatsapp_template: expected a Twilio Content SID "
            "(\"HX\" and 32 hex characters), got 'HX123'"
        ],
    ),
    (
        "system keyword",
        course('title: {es: "Curso", en: "Course"}\nkeywords:\n  - ALFA\n  - "¡Stop!"\n'),
        [f"{C}:4: keywords: '¡Stop!' collides with the system keyword STOP (opt_out)"],
    ),
    (
        "system keyword with an accent",
        course('title: {es: "Curso", en: "Course"}\nkeywords: {es: [Menú], en: [ALFA]}\n'),
        [f"{C}:2: keywords: 'Menú' collides with the system keyword MENU (menu)"],
    ),
    (
        "empty keyword",
        course('title: {es: "Curso", en: "Course"}\nkeywords: [ALFA, "?!"]\n'),
        [f"{C}:2: keywords: '?!' is empty once spaces and punctuation are dropped"],
    ),
    (
        "no keywords",
        course('title: {es: "Curso", en: "Course"}\nkeywords: []\n'),
        [f"{C}:2: keywords: no keywords listed: a course needs at least one"],
    ),
    # --- wrong types
    (
        "keywords as a single word",
        course('title: {es: "Curso", en: "Course"}\nkeywords: ALFA\n'),
        [f"{C}:2: keywords: expected a list of words, got 'ALFA'"],
    ),
    (
        "title as plain text",
        course('title: "Curso"\nkeywords: [ALFA]\n'),
        [f"{C}:1: title: expected a mapping of language to text like {{es: …, en: …}}, got 'Curso'"],
    ),
    (
        "quiz as a mapping",
        lesson(LESSON + "quiz:\n  ask: {es: x, en: y}\n"),
        [f"{L}:4: quiz: expected a list, got a mapping"],
    ),
    (
        "option as a list",
        quiz("""\
            - ask: {es: "¿Sí?", en: "Yes?"}
              options:
                - {es: "Sí", en: "Yes"}
                - [No, No]
              answer: 1
        """),
        [
            f"{L}:7: quiz[1].options[2]: expected a mapping of language to text "
            "like {es: …, en: …}, got a list"
        ],
    ),
    (
        "text as a list",
        lesson('title: {es: "Uno", en: [One]}\nbody: {es: "Hola.", en: "Hello."}\n'),
        [f"{L}:1: title.en: expected text, got a list"],
    ),
    (
        "source as a mapping",
        lesson(LESSON + "source: {url: x}\n"),
        [f"{L}:3: source: expected text, got a mapping"],
    ),
    # --- files and folders
    *[
        (
            f"lesson file name {name}",
            course(lessons={"01-uno.yaml": LESSON, name: LESSON}),
            [
                f"courses/alfa/{name}:1: lesson file name must be NN-slug.yaml: two digits, '-', "
                "then a-z, 0-9, '-' or '_'"
            ],
        )
        for name in ("1-dos.yaml", "02_dos.yaml", "02-Dos.yaml", "02-dos.yml", "dos.yaml", "002-dos.yaml")
    ],
    ("no lessons", course(lessons={}), ["courses/alfa:1: course folder has no lessons (NN-slug.yaml files)"]),
    ("no course.yaml", course(None), ["courses/alfa:1: course folder has no course.yaml"]),
    (
        "bad course id",
        {"al fa/course.yaml": COURSE, "al fa/01-uno.yaml": LESSON},
        ["courses/al fa:1: course folder name (the course id) may only hold a-z, A-Z, 0-9, '-', '_'"],
    ),
    (
        "several problems in one course",
        course(
            COURSE + "timezone: Mars/Olympus\n",
            {
                "01-uno.yaml": LESSON + "extra: 1\n",
                "02-dos.yaml": 'title: {es: "Dos"}\nbody: {es: "a", en: "b"}\n',
            },
        ),
        [
            f"{C}:3: timezone: unknown time zone 'Mars/Olympus' (use an IANA name like America/Mexico_City)",
            f"{L}:3: unknown key 'extra' (allowed: title, body, sms, quiz, source)",
            "courses/alfa/02-dos.yaml:1: title: missing language 'en'",
        ],
    ),
]


@pytest.mark.parametrize(("files", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_each_problem_is_reported_at_its_line_and_the_course_left_out(load, files, expected):
    catalog, problems = load(files)
    assert [str(problem) for problem in problems] == expected
    assert catalog.courses == ()


def test_problem_prints_as_file_line_message():
    assert (
        str(Problem("lessons/a/01-x.yaml", 7, "quiz[1]: empty option"))
        == "lessons/a/01-x.yaml:7: quiz[1]: empty option"
    )


def test_invalid_utf8_is_reported_at_its_line(load, tmp_path):
    write(tmp_path / "courses", course())
    (tmp_path / "courses/alfa/01-uno.yaml").write_bytes(LESSON.encode() + b"source: caf\xe9\n")
    catalog, problems = load_catalog("courses")
    assert [str(problem) for problem in problems] == [f"{L}:3: not valid UTF-8 text"]
    assert catalog.courses == ()


def test_tagged_values_are_not_taken_for_numbers(load):
    catalog, problems = load(
        quiz("""\
        - ask: {es: "¿Sí?", en: "Yes?"}
          options: [{es: "Sí", en: "Yes"}, {es: "No", en: "No"}]
          answer: !option 1
    """)
    )
    assert [str(problem) for problem in problems] == [
        f"{L}:6: quiz[1].answer: expected the number of the right option, got !option '1'"
    ]


def test_missing_directory_is_one_problem(tmp_path):
    catalog, problems = load_catalog(tmp_path / "nope")
    assert catalog.courses == ()
    assert problems == [Problem(str(tmp_path / "nope"), 1, "no such folder of courses")]


def test_sample_course_loads_with_its_values_and_lessons_in_file_name_order():
    catalog, problems = load_catalog(SAMPLE)
    assert problems == []
    (course,) = catalog.courses
    assert course.id == "seguridad"
    assert course.title == {"es": "Seguridad humana y migración", "en": "Human security and migration"}
    assert course.description == {"es": "Cinco minutos al día.", "en": "Five minutes a day."}
    assert course.keywords == ("SEGURIDAD", "SECURITY", "MIGRACION SEGURA")
    assert course.languages == ("es", "en")
    assert course.schedule == Schedule(days=(0, 2, 4), at=time(8, 30))
    assert course.timezone == "America/Guatemala"
    assert course.pass_mark == 0.8
    assert course.channels == ("sms", "whatsapp")
    assert course.whatsapp_template == "HX0123456789abcdef0123456789ABCDEF"
    assert [lesson.slug for lesson in course.lessons] == ["01-que-es", "02-derechos", "10-cierre"]
    first = course.lessons[0]
    assert first.title["es"] == "¿Qué es la seguridad humana?"
    assert first.sms == {"es": "Seguridad humana: las personas en el centro."}
    assert first.source == "UN Trust Fund for Human Security"
    assert first.quiz == (
        Question(
            ask={"es": "¿Quién está en el centro?", "en": "Who is at the centre?"},
            options=({"es": "El Estado", "en": "The state"}, {"es": "Las personas", "en": "People"}),
            answer=2,
            explain={"es": "Las personas, siempre.", "en": "People, always."},
        ),
    )
    assert first.text_for("es", "sms") == "Seguridad humana: las personas en el centro."
    assert (
        first.text_for("en", "sms") == "What is human security?\n\nHuman security puts people at the centre."
    )
    assert catalog.by_keyword("SECURITY") is course


def test_defaults_apply_when_keys_are_absent(load):
    catalog, problems = load(course())
    assert problems == []
    (loaded,) = catalog.courses
    assert loaded == Course(
        id="alfa",
        title={"es": "Curso", "en": "Course"},
        description={},
        keywords=("ALFA",),
        languages=("es", "en"),
        schedule=Schedule(days=(0, 1, 2, 3, 4, 5, 6), at=time(9, 0)),
        timezone="America/Mexico_City",
        pass_mark=0.7,
        channels=("sms", "whatsapp", "telegram"),
        lessons=(
            Lesson(slug="01-uno", title={"es": "Uno", "en": "One"}, body={"es": "Hola.", "en": "Hello."}),
        ),
        whatsapp_template=None,
    )


@pytest.mark.parametrize(
    ("extra", "attribute", "value"),
    [
        ("schedule: {days: weekdays, at: 9:30}", "schedule", Schedule(days=(0, 1, 2, 3, 4), at=time(9, 30))),
        ("schedule: {days: [Fri, mon, fri]}", "schedule", Schedule(days=(0, 4), at=time(9, 0))),
        ("schedule: {at: '7:05'}", "schedule", Schedule(at=time(7, 5))),
        ("pass_mark: 1", "pass_mark", 1.0),
        ("channels: [telegram, sms, telegram]", "channels", ("telegram", "sms")),
        ("languages: [en, es]", "languages", ("en", "es")),
        ("timezone: Europe/Madrid", "timezone", "Europe/Madrid"),
        (
            "whatsapp_template: ' HXabcdefabcdefabcdefabcdefabcdefab '",
            "whatsapp_template",
            "HXabcdefabcdefabcdefabcdefabcdefab",
        ),
    ],
)
def test_accepted_course_settings(load, extra, attribute, value):
    catalog, problems = load(course(COURSE + extra + "\n"))
    assert problems == []
    assert getattr(catalog.courses[0], attribute) == value


def test_keywords_by_language_are_normalised_and_merged(load):
    text = """\
        title: {es: "Curso", en: "Course"}
        keywords:
          es: [Migración, "  alfa! "]
          en: [migration, ALFA]
    """
    catalog, problems = load(course(text))
    assert problems == []
    assert catalog.courses[0].keywords == ("MIGRACION", "ALFA", "MIGRATION")


def test_yaml_words_that_look_like_booleans_stay_text(load):
    text = 'title: {es: "Curso", en: "Course"}\nkeywords: [NO, "on"]\n'
    catalog, problems = load(
        course(text, {"01-uno.yaml": "title: {es: Sí, en: Yes}\nbody: {es: no, en: off}\n"})
    )
    assert problems == []
    assert catalog.courses[0].keywords == ("NO", "ON")
    assert catalog.courses[0].lessons[0].title == {"es": "Sí", "en": "Yes"}
    assert catalog.courses[0].lessons[0].body == {"es": "no", "en": "off"}


def test_broken_course_is_left_out_while_the_one_beside_it_loads(load):
    files = {
        "alfa/course.yaml": COURSE,
        "alfa/01-uno.yaml": QUIZ.replace("answer: 1", "answer: 9"),
        "beta/course.yaml": COURSE.replace("ALFA", "BETA"),
        "beta/01-uno.yaml": QUIZ,
    }
    catalog, problems = load(files)
    assert [course.id for course in catalog.courses] == ["beta"]
    assert [str(problem) for problem in problems] == [
        f"{L}:8: quiz[1].answer: 9 is out of range: the options are numbered 1 to 2"
    ]
    assert catalog.courses[0].lessons[0].quiz[0].answer == 1


def test_keyword_of_another_course_is_reported_on_the_later_course(load):
    files = {
        "alfa/course.yaml": COURSE,
        "alfa/01-uno.yaml": LESSON,
        "beta/course.yaml": 'title: {es: "B", en: "B"}\nkeywords: [BETA, Alfa]\n',
        "beta/01-uno.yaml": LESSON,
    }
    catalog, problems = load(files)
    assert [course.id for course in catalog.courses] == ["alfa"]
    assert [str(problem) for problem in problems] == [
        "courses/beta/course.yaml:2: keywords: 'ALFA' is already a keyword of course 'alfa'"
    ]


def test_other_files_in_folders_are_ignored(load):
    files = {
        **course(),
        "alfa/README.md": "# notes",
        "alfa/.01-uno.yaml.swp": "x",
        "notes.txt": "x",
        ".git": None,
    }
    catalog, problems = load(files)
    assert problems == []
    assert [course.id for course in catalog.courses] == ["alfa"]


def test_render_question_text():
    question = Question(
        ask={"es": "¿Quién?\n", "en": "Who?"},
        options=({"es": "El Estado", "en": "The state"}, {"es": "Las personas", "en": "People"}),
        answer=2,
    )
    assert render_question_text(question, "es") == "¿Quién?\n1) El Estado\n2) Las personas"
    assert render_question_text(question, "en") == "Who?\n1) The state\n2) People"


def test_sms_report_gives_encoding_segments_and_ucs2_chars(load):
    files = course(
        COURSE + "channels: [sms, whatsapp, telegram]\n",
        {
            "01-hola.yaml": 'title: {es: "Hola", en: "Hello"}\nbody: {es: "Bienvenida.", en: "Welcome."}\n',
            "02-mas.yaml": """\
                title: {es: "Más", en: "More"}
                body: {es: "Información “útil”.", en: "Useful."}
                sms: {es: "Más información", en: "More"}
            """,
        },
    )
    catalog, problems = load(files)
    assert problems == []
    assert sms_report(catalog.courses[0]) == [
        "alfa/01-hola [sms es] GSM-7, 1 segment, 17 units",
        "alfa/01-hola [sms en] GSM-7, 1 segment, 15 units",
        "alfa/01-hola [whatsapp es] GSM-7, 1 segment, 17 units",
        "alfa/01-hola [whatsapp en] GSM-7, 1 segment, 15 units",
        "alfa/02-mas [sms es] UCS-2, 1 segment, 15 units; forces UCS-2: á ó",
        "alfa/02-mas [sms en] GSM-7, 1 segment, 4 units",
        "alfa/02-mas [whatsapp es] UCS-2, 1 segment, 24 units; forces UCS-2: á ó “ ú ”",
        "alfa/02-mas [whatsapp en] GSM-7, 1 segment, 13 units",
    ]


def test_sms_report_covers_quiz_questions_on_sms_and_counts_segments(load):
    long_body = "Texto largo. " * 13  # "Uno\n\n" + 168 characters (trailing space stripped): over 160
    files = course(
        COURSE + "channels: [telegram, sms]\n",
        {
            "01-uno.yaml": f'title: {{es: "Uno", en: "One"}}\nbody: {{es: "{long_body}", en: "Hi."}}\n'
            + QUIZ[QUIZ.index("quiz:") :],
        },
    )
    catalog, problems = load(files)
    assert problems == []
    assert sms_report(catalog.courses[0]) == [
        "alfa/01-uno [sms es] GSM-7, 2 segments, 173 units",
        "alfa/01-uno [sms en] GSM-7, 1 segment, 8 units",
        "alfa/01-uno quiz 1 [sms es] UCS-2, 1 segment, 16 units; forces UCS-2: í",
        "alfa/01-uno quiz 1 [sms en] GSM-7, 1 segment, 17 units",
    ]


def test_without_lessons_dir_the_bundled_courses_are_found_from_any_folder(tmp_path, monkeypatch):
    from bot.config import BUNDLED_LESSONS, Settings

    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.lessons_dir == str(BUNDLED_LESSONS)
    catalog, problems = load_catalog(settings.lessons_dir)
    assert problems == [] and len(catalog.courses) == 2
    (tmp_path / "lessons").mkdir()  # a folder of one's own, where the command runs, comes first
    assert Settings.from_env({}).lessons_dir == "lessons"
    assert Settings.from_env({"LESSONS_DIR": "/srv/cursos"}).lessons_dir == "/srv/cursos"
