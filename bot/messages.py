"""System messages in every language, and their GSM-7-friendly form for SMS."""

from __future__ import annotations

import re

LANGUAGES = ("es", "en")

TEXTS: dict[str, dict[str, str]] = {
    "welcome": {
        "es": "¡Hola! Soy Vereda: cursos cortos por mensaje, una lección al día. "
        "Elige un curso respondiendo con su número (EN: English):",
        "en": "Hi! I'm Vereda: short courses by message, one lesson a day. "
        "Choose a course by replying with its number (ES: español):",
    },
    "menu": {"es": "Cursos disponibles:", "en": "Available courses:"},
    "no_courses": {
        "es": "Por ahora no hay cursos disponibles. Vuelve a escribir más tarde.",
        "en": "There are no courses available right now. Please write again later.",
    },
    "help": {
        "es": "Comandos: SIGUIENTE (próxima lección), ESTADO (tu progreso), CURSOS (menú), "
        "PAUSA / SEGUIR (lecciones diarias), EN (English), BORRAR (borrar tus datos), "
        "BAJA (no recibir más mensajes).",
        "en": "Commands: NEXT (next lesson), STATUS (your progress), COURSES (menu), "
        "PAUSE / RESUME (daily lessons), ES (español), DELETE (erase your data), "
        "STOP (no more messages).",
    },
    "help_telegram": {
        "es": "Comandos: /next (próxima lección), /status (tu progreso), /menu (cursos), "
        "/pause y /resume (lecciones diarias), /lang (idioma), /delete (borrar tus datos), "
        "/stop (no recibir más mensajes). También puedes escribir SIGUIENTE, ESTADO o AYUDA.",
        "en": "Commands: /next (next lesson), /status (your progress), /menu (courses), "
        "/pause and /resume (daily lessons), /lang (language), /delete (erase your data), "
        "/stop (no more messages). You can also write NEXT, STATUS or HELP.",
    },
    "enrolled": {
        "es": "Te inscribiste en «{course}». Aquí va la lección 1 de {total}.",
        "en": "You enrolled in “{course}”. Here is lesson 1 of {total}.",
    },
    "already_enrolled": {
        "es": "Ya estás en «{course}» (lección {position} de {total}).",
        "en": "You are already in “{course}” (lesson {position} of {total}).",
    },
    "course_done_already": {
        "es": "Ya terminaste «{course}» con {percent}%. Escribe CURSOS para ver otros.",
        "en": "You already finished “{course}” with {percent}%. Send COURSES to see others.",
    },
    "channel_unavailable": {
        "es": "Ese curso no está disponible en este canal.",
        "en": "That course is not available on this channel.",
    },
    "question": {"es": "Pregunta {n} de {total}: {ask}", "en": "Question {n} of {total}: {ask}"},
    "answer_hint": {
        "es": "Responde con el número de tu respuesta.",
        "en": "Reply with the number of your answer.",
    },
    "reask": {
        "es": "No reconocí tu respuesta. Responde con el número (1-{count}), la letra o el texto de una opción.",
        "en": "I did not recognise your answer. Reply with the number (1-{count}), letter or text of an option.",
    },
    "reask_again": {
        "es": "Responde 1-{count}, o escribe AYUDA.",
        "en": "Reply 1-{count}, or send HELP.",
    },
    "empty": {
        "es": "Tu mensaje llegó vacío.",
        "en": "Your message arrived empty.",
    },
    "greeting_back": {
        "es": "¡Hola de nuevo! Escribe SIGUIENTE para la próxima lección, ESTADO para tu progreso o AYUDA.",
        "en": "Hello again! Send NEXT for the next lesson, STATUS for your progress or HELP.",
    },
    "greeting_question": {
        "es": "¡Hola de nuevo! Te espera esta pregunta:",
        "en": "Hello again! This question is waiting for you:",
    },
    "media_only": {
        "es": "Recibí tu archivo, pero solo puedo leer texto.",
        "en": "I got your file, but I can only read text.",
    },
    "right": {"es": "¡Correcto!", "en": "Correct!"},
    "wrong": {"es": "No es correcto. La respuesta es: {answer}.", "en": "Not quite. The answer is: {answer}."},
    "lesson_score": {
        "es": "Lección {n} terminada: {right} de {total} correctas.",
        "en": "Lesson {n} done: {right} of {total} right.",
    },
    "lesson_done": {"es": "Lección {n} terminada.", "en": "Lesson {n} done."},
    "next_at": {
        "es": "La próxima lección llega {when}. Escribe SIGUIENTE para recibirla ahora.",
        "en": "The next lesson comes {when}. Send NEXT to get it now.",
    },
    "course_passed": {
        "es": "¡Terminaste «{course}»! Resultado: {percent}% ({right} de {total}). Aprobado "
        "(mínimo {mark}%). Escribe CURSOS para ver otros cursos.",
        "en": "You finished “{course}”! Score: {percent}% ({right} of {total}). Passed "
        "(pass mark {mark}%). Send COURSES to see other courses.",
    },
    "course_failed": {
        "es": "Terminaste «{course}». Resultado: {percent}% ({right} de {total}). No aprobado "
        "(mínimo {mark}%). Escribe CURSOS para ver otros cursos.",
        "en": "You finished “{course}”. Score: {percent}% ({right} of {total}). Not passed "
        "(pass mark {mark}%). Send COURSES to see other courses.",
    },
    "finish_quiz_first": {
        "es": "Primero responde la pregunta pendiente:",
        "en": "First answer the open question:",
    },
    "course_unavailable": {
        "es": "Tu curso no está disponible por ahora; tu avance está guardado.",
        "en": "Your course is not available right now; your progress is kept.",
    },
    "nothing_enrolled": {
        "es": "Aún no estás en ningún curso.",
        "en": "You are not in any course yet.",
    },
    "not_understood": {
        "es": "No entendí. Escribe SIGUIENTE para la próxima lección, ESTADO para tu progreso o AYUDA.",
        "en": "I did not understand. Send NEXT for the next lesson, STATUS for your progress or HELP.",
    },
    "status_line": {
        "es": "«{course}»: lección {position} de {total}, {right} de {answered} correctas{state}.",
        "en": "“{course}”: lesson {position} of {total}, {right} of {answered} right{state}.",
    },
    "status_line_reading": {
        "es": "«{course}»: lección {position} de {total}{state}.",
        "en": "“{course}”: lesson {position} of {total}{state}.",
    },
    "state_paused": {"es": " (en pausa)", "en": " (paused)"},
    "state_finished": {"es": " (terminado)", "en": " (finished)"},
    "paused": {
        "es": "Lecciones diarias en pausa. Escribe SEGUIR para continuar.",
        "en": "Daily lessons paused. Send RESUME to continue.",
    },
    "reminder": {
        "es": "Recordatorio de «{course}»: tienes una pregunta pendiente. La próxima lección llega cuando "
        "la respondas.",
        "en": "Reminder from “{course}”: a question is waiting for you. The next lesson comes once you answer it.",
    },
    "paused_after_reminders": {
        "es": "Pausamos «{course}» porque no hubo respuesta en 3 días. Escribe SEGUIR para continuar "
        "o BAJA para no recibir más mensajes.",
        "en": "We paused “{course}” after 3 days without an answer. Send RESUME to continue or STOP to "
        "receive no more messages.",
    },
    "already_active": {
        "es": "Tus lecciones diarias ya están activas.",
        "en": "Your daily lessons are already on.",
    },
    "resumed": {
        "es": "Lecciones diarias activadas de nuevo.",
        "en": "Daily lessons are back on.",
    },
    "language_ask": {
        "es": "Elige tu idioma / Choose your language:",
        "en": "Choose your language / Elige tu idioma:",
    },
    "language_set": {"es": "Listo: te escribiré en español.", "en": "Done: I will write in English."},
    "delete_ask": {
        "es": "¿Borrar todos tus datos (progreso, respuestas y mensajes)? Responde SI para borrarlos o NO para "
        "conservarlos.",
        "en": "Erase all your data (progress, answers and messages)? Reply YES to erase them or NO to keep them.",
    },
    "delete_done": {
        "es": "Tus datos fueron borrados. Si vuelves a escribir, empezarás de cero.",
        "en": "Your data has been erased. If you write again, you will start from scratch.",
    },
    "delete_cancelled": {"es": "No se borró nada.", "en": "Nothing was erased."},
    "welcome_back": {
        "es": "Volviste a activar los mensajes de Vereda.",
        "en": "Vereda messages are on again.",
    },
    "today": {"es": "hoy a las {time}", "en": "today at {time}"},
    "tomorrow": {"es": "mañana a las {time}", "en": "tomorrow at {time}"},
    "weekday": {"es": "el {day} a las {time}", "en": "on {day} at {time}"},
}

WEEKDAY_NAMES = {
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
}

# Characters outside GSM 03.38 with a plain GSM-7 stand-in. One of them in an SMS turns the whole
# message into UCS-2 (70 characters a segment instead of 160), so system texts avoid them on SMS.
_GSM_STAND_INS = str.maketrans({
    "á": "a", "í": "i", "ó": "o", "ú": "u", "Á": "A", "Í": "I", "Ó": "O", "Ú": "U",
    "â": "a", "ê": "e", "ô": "o", "ç": "c", "ã": "a", "õ": "o", "ï": "i",
    "«": '"', "»": '"', "“": '"', "”": '"', "„": '"', "‘": "'", "’": "'",
    "–": "-", "—": "-", "…": "...", "\u00a0": " ",
})


def gsm_friendly(text: str) -> str:
    """`text` with common non-GSM characters replaced by their GSM-7 stand-ins."""
    return text.translate(_GSM_STAND_INS)


# On Telegram a /command in a message is a link that sends it: our texts name the command, not the keyword.
_COMMANDS = {"SIGUIENTE": "/next", "NEXT": "/next", "ESTADO": "/status", "STATUS": "/status", "AYUDA": "/help",
             "HELP": "/help", "SEGUIR": "/resume", "RESUME": "/resume", "PAUSA": "/pause", "PAUSE": "/pause",
             "BAJA": "/stop", "STOP": "/stop", "CURSOS": "/menu", "COURSES": "/menu", "BORRAR": "/delete",
             "DELETE": "/delete"}
_AS_COMMAND = re.compile(r"\b(?:" + "|".join(_COMMANDS) + r")\b")


def say(key: str, language: str, channel: str = "", **values: object) -> str:
    """The system message `key` in `language` (falls back to Spanish), GSM-7-friendly on SMS.

    Our own wording is made GSM-friendly, and so is a course title set in it (`course`: the menu and every
    "«course»" line would otherwise go out as UCS-2 for one accent); other values (questions) stay as authored.
    A channel's own wording of a message (`help_telegram`) is used on that channel instead.
    """
    if f"{key}_{channel}" in TEXTS:
        key = f"{key}_{channel}"
    texts = TEXTS[key]
    text = texts.get(language) or texts["es"]
    if channel == "telegram" and not key.endswith("_telegram"):  # the channel's own wording names its commands
        text = _AS_COMMAND.sub(lambda match: _COMMANDS[match.group(0)], text)  # a tap sends it
    if channel == "sms":
        text = gsm_friendly(text)
        if isinstance(values.get("course"), str):
            values["course"] = gsm_friendly(values["course"])  # type: ignore[arg-type]
    return text.format(**values) if values else text
