"""Vereda's web application: `python app.py` serves it with the scheduler; gunicorn 'app:create_app()'."""

from __future__ import annotations

import logging
import signal

from flask import Flask

from bot.auth import app_secret
from bot.config import Settings
from bot.logs import configure
from bot.runtime import Runtime, build

log = logging.getLogger("vereda")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    """The Flask app for `settings` (default: from the environment)."""
    settings = settings or Settings.from_env()
    configure(settings.log_level, "%(asctime)s %(levelname)s %(name)s %(message)s")
    app = Flask(__name__)
    runtime = runtime or build(settings)
    app.extensions["vereda"] = runtime
    # The session-signing key is made once and kept in the database: every worker shares it, and no
    # operator has to configure one.
    app.secret_key = app_secret(runtime.factory, "flask-session")
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=(settings.public_base_url or "").startswith("https://"),
        MAX_CONTENT_LENGTH=1024 * 1024,  # webhooks and forms are small; refuse megabytes early
    )

    from bot.web import RowIdConverter, health, telegram, webhooks

    app.url_map.converters["id"] = RowIdConverter

    app.register_blueprint(webhooks.bp)
    app.register_blueprint(telegram.bp)
    app.register_blueprint(health.bp)
    from bot.web import api

    app.register_blueprint(api.bp)
    from bot.web import console

    app.register_blueprint(console.bp)
    return app


def _say_what_runs(settings: Settings, runtime: Runtime) -> None:
    """What a new operator wants to see at start: which courses loaded, which channels are on."""
    courses = ", ".join(f"{course.id} ({len(course.lessons)} lessons)" for course in runtime.catalog.courses)
    log.info("courses from %s: %s", settings.lessons_dir, courses or "none")
    log.info("SMS and WhatsApp: %s", "on" if settings.twilio_enabled
             else "off (set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)")
    log.info("Telegram: %s", "on" if settings.telegram_enabled and settings.telegram_webhook_secret
             else "off (set TELEGRAM_BOT_TOKEN and TELEGRAM_WEBHOOK_SECRET)")
    log.info("try it without a provider: vereda chat")


def main() -> None:
    """Serve on HOST:PORT with the dispatcher and, unless VEREDA_SCHEDULER=off, the scheduler."""
    settings = Settings.from_env()
    app = create_app(settings)
    runtime: Runtime = app.extensions["vereda"]
    _say_what_runs(settings, runtime)
    if runtime.dispatcher.enabled:
        runtime.dispatcher.ensure_started()
    scheduler = None
    if settings.scheduler:
        from scheduler import start_scheduler

        scheduler = start_scheduler(runtime)

    def shut_down(signum: int, _frame: object) -> None:
        # Finish the message being sent, hand the rest back to the queue, then leave.
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        runtime.dispatcher.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    # No debug reloader: it would start a second process, and with it a second scheduler.
    app.run(host=settings.host, port=settings.port, debug=False, use_reloader=False, threaded=True)


if __name__ == "__main__":
    main()
