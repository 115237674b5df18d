"""The `vereda` console script: operator commands."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta

import click

from bot.config import ConfigError, Settings
from bot.web import ROW_ID_MAX


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


def _runtime(settings: Settings, senders=None):  # type: ignore[no-untyped-def]

    from bot.logs import configure
    from bot.runtime import build

    configure("WARNING", "%(levelname)s %(name)s %(message)s")
    return build(settings, senders)


def _parse_now(value: str | None, option: str = "--now") -> datetime | None:
    """An ISO-8601 time; one without a zone is UTC."""
    from bot.broadcasts import LATEST_YEAR

    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO-8601 time", param_hint=option) from None
    except OverflowError:
        moment = datetime.max.replace(tzinfo=UTC)  # refused just below
    if not 1970 <= moment.year <= LATEST_YEAR:
        raise click.BadParameter(f"{value!r} is out of range (years 1970 to {LATEST_YEAR})", param_hint=option)
    return moment


@click.group()
def main() -> None:
    """Vereda: micro-learning over SMS, WhatsApp and Telegram."""


@main.group()
def lessons() -> None:
    """Course files."""


@lessons.command("check")
@click.argument("directory", required=False, type=click.Path(file_okay=False))
def lessons_check(directory: str | None) -> None:
    """Validate every course in DIRECTORY (default LESSONS_DIR) and report SMS cost per lesson."""
    from pathlib import Path

    from bot.catalog import load_catalog, sms_report

    folder = directory or _settings().lessons_dir
    if not Path(folder).is_dir():
        raise click.ClickException(f"{folder}: no such folder")
    catalog, problems = load_catalog(folder)
    for course in catalog.courses:
        click.echo(f"{course.id}: {len(course.lessons)} lesson(s), "
                   f"{sum(len(lesson.quiz) for lesson in course.lessons)} question(s)")
        for line in sms_report(course):
            click.echo(f"  {line}")
    for problem in problems:
        click.echo(str(problem), err=True)
    if problems:
        click.echo(f"{len(problems)} problem(s)", err=True)
        sys.exit(1)
    if not catalog.courses:
        hint = ""
        if (Path(folder) / "course.yaml").is_file():  # one course's own folder, not a folder of courses
            hint = f"; it is one course: check the folder that holds it ({Path(folder).resolve().parent})"
        click.echo(f"{folder}: no courses found{hint}", err=True)
        sys.exit(1)
    click.echo(f"ok: {len(catalog.courses)} course(s)")


@main.command()
@click.option("--channel", type=click.Choice(["sms", "whatsapp", "telegram"]), default="sms", show_default=True)
@click.option("--address", help="the learner's phone number (E.164) or Telegram chat id")
def chat(channel: str, address: str | None) -> None:
    """Talk to the bot in the terminal as a learner; no provider needed. End with Ctrl-D."""
    from bot.channels.console import ConsoleSender
    from bot.channels.telegram import split_start, telegram_id_in_range
    from bot.dispatcher import utcnow
    from bot.identity import BadAddress, e164
    from bot.outbox import Outbox
    from bot.services import Envelope, receive

    interactive = sys.stdin.isatty()
    console = ConsoleSender(lambda body: click.echo(f"\nvereda> {body.replace(chr(10), chr(10) + '        ')}"))
    runtime = _runtime(_settings(), senders={"console": console})
    outbox = Outbox(runtime.factory, {"console": console})
    if address is None:
        address = "1000001" if channel == "telegram" else "+15555550100"  # a fictional number (555-01xx)
    if channel == "whatsapp" and not address.startswith("whatsapp:"):
        address = f"whatsapp:{address}"
    chat_id: int | None = None
    if channel == "telegram":
        if not address.lstrip("-").isdigit() or not telegram_id_in_range(int(address)):
            raise click.BadParameter("a Telegram chat id is a number (64-bit)", param_hint="--address")
        chat_id = int(address)
    else:
        try:
            e164(address)  # before the first line, not after it
        except BadAddress as error:
            raise click.BadParameter(str(error), param_hint="--address") from None
    if interactive:
        click.echo(f"Vereda chat on {channel} as {address}. Write 'hola' to start; Ctrl-D to leave.")
    while True:
        try:
            line = input("\ntú> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        if not interactive:
            click.echo(f"\ntú> {line}")
        start, text = split_start(line) if channel == "telegram" else (None, line)  # as the webhook reads it
        envelope = Envelope(channel=channel, provider_id=f"chat-{uuid.uuid4().hex}", address=address, text=text,
                            telegram_chat_id=chat_id, course_start=start)
        receive(runtime.factory, envelope, runtime.context(utcnow()), runtime.senders, transport="console")
        outbox.dispatch(utcnow)
    click.echo("")


@main.command("tick")
@click.option("--now", "now_text", help="ISO-8601 time to act as of, UTC unless it has a zone (default: now)")
@click.option("--budget", type=click.FloatRange(min=0, max=86_400), default=50.0, show_default=True,
              help="seconds to keep dispatching")
def tick_command(now_text: str | None, budget: float) -> None:
    """One scheduler pass: plan due lessons, then dispatch the outbox until nothing is due."""
    from scheduler import tick

    if budget != budget:  # NaN passes every range check
        raise click.BadParameter("not a number", param_hint="--budget")
    now = _parse_now(now_text)
    runtime = _runtime(_settings())
    report = tick(runtime, now=now, budget=budget)
    click.echo(str(report))


def _segment_options(function):  # type: ignore[no-untyped-def]
    options = [
        click.option("--text-es", help="the message in Spanish"),
        click.option("--text-en", help="the message in English"),
        click.option("--course", help="learners enrolled in this course"),
        click.option("--channel", type=click.Choice(["sms", "whatsapp", "telegram"])),
        click.option("--language", type=click.Choice(["es", "en"])),
        click.option("--tag", help="learners with this tag"),
        click.option("--progress", type=click.Choice(["active", "paused", "finished"]),
                     help="the enrolment's state (with --course: in that course)"),
        click.option("--template", "whatsapp_template", help="WhatsApp Content SID for learners outside 24 h"),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _broadcast_args(kwargs: dict) -> tuple[dict[str, str], dict[str, str]]:  # type: ignore[type-arg]
    text = {"es": kwargs.get("text_es") or "", "en": kwargs.get("text_en") or ""}
    segment = {key: kwargs.get(key) or "" for key in ("course", "channel", "language", "tag", "progress")}
    return text, segment


def _preview(runtime, text: dict[str, str], segment: dict[str, str]):  # type: ignore[no-untyped-def]
    """The broadcast's preview (recipients, SMS cost), its options checked first."""
    from bot.broadcasts import BroadcastError, preview, validate

    try:
        text, segment = validate(text, segment, runtime.catalog)
    except BroadcastError as error:
        raise click.ClickException(str(error)) from None
    with runtime.factory() as session:
        return preview(session, text, segment)


def _show_preview(runtime, text: dict[str, str], segment: dict[str, str]):  # type: ignore[no-untyped-def]
    shown = _preview(runtime, text, segment)
    settings = runtime.settings
    for line in shown.lines(settings.message_prices, settings.price_currency, runtime.senders):
        click.echo(line)
    return shown


@main.group()
def broadcast() -> None:
    """Messages from coordinators to a segment of learners."""


@broadcast.command("preview")
@_segment_options
def broadcast_preview(**kwargs: str) -> None:
    """Recipients per channel, SMS encoding, segments and cost; sends nothing."""
    runtime = _runtime(_settings())
    text, segment = _broadcast_args(kwargs)
    _show_preview(runtime, text, segment)


@broadcast.command("create")
@_segment_options
@click.option("--at", "at_text", help="ISO-8601 time to send, UTC unless it has a zone, e.g. "
              "2027-01-05T09:00-06:00 (default: now)")
@click.option("--yes", is_flag=True, help="do not show the preview and ask")
def broadcast_create(at_text: str | None, yes: bool, **kwargs: str) -> None:
    """Create a broadcast (now or at a time); prints its id on the last line."""
    from bot.broadcasts import BroadcastError, create
    from bot.catalog import CONTENT_SID
    from bot.dispatcher import utcnow

    runtime = _runtime(_settings())
    text, segment = _broadcast_args(kwargs)
    now = utcnow()
    send_at = _parse_now(at_text, "--at") or now
    if send_at < now - timedelta(minutes=1):  # a wrong year or day must not mean "send to everyone now"
        raise click.BadParameter(f"{send_at.isoformat(timespec='minutes')} is in the past; leave --at out to "
                                 "send now", param_hint="--at")
    template = kwargs.get("whatsapp_template") or None
    if template is not None and not CONTENT_SID.match(template):
        raise click.BadParameter('a Twilio Content SID ("HX" and 32 hex characters)', param_hint="--template")
    shown = _preview(runtime, text, segment) if yes else _show_preview(runtime, text, segment)
    if not yes:
        if not sys.stdin.isatty():
            raise click.ClickException("not confirmed: run with --yes to create without asking")
        click.confirm(f"send at {send_at.isoformat(timespec='minutes')}?", abort=True)
    try:
        broadcast_id = create(runtime.factory, text, segment, send_at, runtime.catalog, now,
                              whatsapp_template=template, created_by="cli")
    except BroadcastError as error:
        raise click.ClickException(str(error)) from None
    if not sum(shown.recipients.values()):
        click.echo("warning: no learner matches this segment now; it goes to whoever matches when it is sent",
                   err=True)
    click.echo(f"broadcast created, sends at {max(send_at, now).isoformat(timespec='seconds')}")
    click.echo(str(broadcast_id))


@broadcast.command("list")
def broadcast_list() -> None:
    """Every broadcast with its state and recipients."""
    from sqlalchemy import select

    from bot.models import Broadcast

    runtime = _runtime(_settings())
    with runtime.factory() as session:
        rows = session.scalars(select(Broadcast).order_by(Broadcast.id)).all()
        if not rows:
            click.echo("no broadcasts")
        for row in rows:
            first = next(iter(row.text.values()))
            segment = ", ".join(f"{k}={v}" for k, v in row.segment.items()) or "everyone"
            click.echo(f"{row.id}\t{row.state}\t{row.send_at.isoformat(timespec='minutes')}\t"
                       f"{row.recipients} recipient(s)\t{segment}\t{first[:40]}")


@broadcast.command("report")
@click.argument("broadcast_id", type=click.IntRange(1, ROW_ID_MAX))
def broadcast_report(broadcast_id: int) -> None:
    """Per-recipient outcome counts: queued, sent, delivered, failed, unknown."""
    from bot.broadcasts import report
    from bot.models import Broadcast

    runtime = _runtime(_settings())
    with runtime.factory() as session:
        row = session.get(Broadcast, broadcast_id)
        if row is None:
            raise click.ClickException(f"no broadcast {broadcast_id}")
        click.echo(f"broadcast {row.id}: {row.state}, {row.recipients} recipient(s)")
        for outcome, count in report(session, broadcast_id).items():
            click.echo(f"{outcome}: {count}")


@broadcast.command("cancel")
@click.argument("broadcast_id", type=click.IntRange(1, ROW_ID_MAX))
def broadcast_cancel(broadcast_id: int) -> None:
    """Cancel a broadcast; messages not yet sent are withdrawn."""
    from bot.broadcasts import BroadcastError, cancel
    from bot.dispatcher import utcnow

    runtime = _runtime(_settings())
    try:
        done = cancel(runtime.factory, broadcast_id, utcnow())
    except BroadcastError as error:
        raise click.ClickException(str(error)) from None
    if done.already:
        click.echo(f"broadcast {broadcast_id} was already cancelled; nothing withdrawn")
    else:
        click.echo(f"broadcast {broadcast_id} cancelled; {done.withdrawn} message(s) withdrawn")


@main.group()
def admin() -> None:
    """Coordinators' accounts and API tokens."""


@admin.command("create-user")
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(["admin", "coordinator", "viewer"]))
def admin_create_user(email: str, role: str) -> None:
    """Create a console account. The password is asked for (or read from standard input); with none
    given, a strong one is made and printed once."""
    import secrets

    from bot.auth import AuthError, create_user
    from bot.dispatcher import utcnow

    if sys.stdin.isatty():
        password = click.prompt("password (empty: make one)", hide_input=True, default="", show_default=False,
                                confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    made = not password
    if made:
        password = secrets.token_urlsafe(15)
    runtime = _runtime(_settings())
    try:
        user_id = create_user(runtime.factory, email, role, password, utcnow())
    except AuthError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"user {user_id} created: {email.strip().lower()} ({role})")
    if made:
        click.echo(f"password (shown once): {password}")


@admin.command("create-token")
@click.option("--role", required=True, type=click.Choice(["admin", "coordinator", "viewer"]))
@click.option("--label", help="what the token is for")
def admin_create_token(role: str, label: str | None) -> None:
    """Create an API bearer token; the token alone is printed on the last line, once."""
    from bot.auth import create_token
    from bot.dispatcher import utcnow

    runtime = _runtime(_settings())
    token = create_token(runtime.factory, role, utcnow(), label)
    click.echo(f"token for role {role} (store it now: it is not kept):")
    click.echo(token)


@admin.command("list-tokens")
def admin_list_tokens() -> None:
    """API tokens (never the tokens themselves): id, role, label, state."""
    from sqlalchemy import select

    from bot.models import ApiToken

    runtime = _runtime(_settings())
    with runtime.factory() as session:
        for row in session.scalars(select(ApiToken).order_by(ApiToken.id)):
            state = "revoked" if row.revoked_at else "active"
            click.echo(f"{row.id}\t{row.role}\t{state}\t{row.label or ''}")


@admin.command("revoke-token")
@click.argument("token_id", type=click.IntRange(1, ROW_ID_MAX))
def admin_revoke_token(token_id: int) -> None:
    """Revoke an API token by its id (see list-tokens)."""
    from bot.auth import AuthError, revoke_token
    from bot.dispatcher import utcnow

    runtime = _runtime(_settings())
    try:
        revoked = revoke_token(runtime.factory, token_id, utcnow())
    except AuthError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"token {token_id} revoked" if revoked else f"token {token_id} was already revoked")


@main.group()
def telegram() -> None:
    """Telegram bot webhook, for operators (uses TELEGRAM_* and PUBLIC_BASE_URL)."""


def _telegram_sender():  # type: ignore[no-untyped-def]
    from bot.channels.telegram import TelegramSender

    settings = _settings()
    if not settings.telegram_bot_token:
        raise click.ClickException("TELEGRAM_BOT_TOKEN is not set")
    return settings, TelegramSender(settings)


@telegram.command("set-webhook")
@click.option("--url", help="default: PUBLIC_BASE_URL/webhooks/telegram")
def telegram_set_webhook(url: str | None) -> None:
    """Point the bot's webhook at this server, with the secret token and the updates Vereda uses."""
    from bot.channels.telegram import ALLOWED_UPDATES

    settings, sender = _telegram_sender()
    if not settings.telegram_webhook_secret:
        raise click.ClickException("TELEGRAM_WEBHOOK_SECRET is not set: the webhook would accept anyone")
    if url is None:
        if not settings.public_base_url:
            raise click.ClickException("set PUBLIC_BASE_URL or pass --url")
        url = f"{settings.public_base_url}/webhooks/telegram"
    sender.call("set_webhook", url=url, secret_token=settings.telegram_webhook_secret,
                allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False)
    click.echo(f"webhook set: {url} ({', '.join(ALLOWED_UPDATES)})")


@telegram.command("delete-webhook")
def telegram_delete_webhook() -> None:
    """Remove the bot's webhook."""
    _settings_, sender = _telegram_sender()
    sender.call("delete_webhook")
    click.echo("webhook deleted")


@telegram.command("info")
def telegram_info() -> None:
    """The bot's identity and webhook state."""
    _settings_, sender = _telegram_sender()
    me = sender.call("get_me")
    info = sender.call("get_webhook_info")
    click.echo(f"bot: @{me.username} ({me.id})")
    click.echo(f"webhook: {info.url or '(none)'}")
    click.echo(f"pending updates: {info.pending_update_count}")
    if info.last_error_message:
        click.echo(f"last error: {info.last_error_message}")
    click.echo(f"allowed updates: {', '.join(info.allowed_updates or ()) or '(all)'}")


@main.command()
def worker() -> None:
    """Run the scheduler and dispatcher without the web server (one or many processes)."""
    import signal
    import threading

    from scheduler import start_scheduler

    runtime = _runtime(_settings())
    runtime.dispatcher.enabled = True  # a worker always sends (VEREDA_DISPATCHER=off is for web processes)
    runtime.dispatcher.ensure_started()
    scheduler = start_scheduler(runtime)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    click.echo("worker running; Ctrl-C or SIGTERM stops it")
    try:
        while not stop.wait(1):
            runtime.dispatcher.wake()
    except KeyboardInterrupt:
        pass
    scheduler.shutdown(wait=False)
    runtime.dispatcher.stop()


if __name__ == "__main__":
    main()
