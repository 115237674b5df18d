"""The coordinators' web console: sign-in, dashboard, learners, courses, broadcasts and a chat simulator.

Plain HTML forms with a CSRF token each, server-drawn SVG charts, no external resources. Every route checks
the role (`require_login`); phone numbers are masked for viewers and in every list; learner text is escaped by
Jinja's autoescape.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import case, func, select, union_all
from sqlalchemy.orm import Session, aliased

from bot import broadcasts, reports
from bot.auth import LOGIN_WINDOW, Throttled, authenticate, end_sessions
from bot.catalog import CONTENT_SID
from bot.channels.console import ConsoleSender
from bot.courses import Course
from bot.dispatcher import utcnow
from bot.drips import WHATSAPP_WINDOW
from bot.identity import BadAddress, e164
from bot.keywords import whole_number
from bot.models import (
    Answer,
    Enrolment,
    InboundMessage,
    Learner,
    LearnerAddress,
    OutboundMessage,
)
from bot.outbox import Outbox
from bot.runtime import Runtime
from bot.services import Envelope, receive
from bot.sms import analyse
from bot.web import MAX_PAGE
from bot.web.access import csrf_ok, csrf_token, mask_address, require_login

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")
PER_PAGE = 50
BACKLOG_STATUSES = ("queued", "held", "sending")
SIMULATOR_CHANNELS = ("sms", "whatsapp", "telegram")
SIMULATED = reports.SIMULATED  # the simulator's transport: its learners' addresses, enrolments and messages
SIMULATOR_DEFAULTS = {"sms": "+15555550100", "whatsapp": "+15555550101", "telegram": "1000001"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["vereda"]
    return runtime


@bp.before_request
def _check_csrf() -> Any:
    """Every form post carries the session's CSRF token, or nothing happens (400)."""
    if request.method == "POST" and not csrf_ok():
        abort(400, "The form has expired or did not come from this console; reload the page and try again.")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if not request.path.startswith("/console/static"):
        response.headers["Cache-Control"] = "no-store"  # learners' data stays out of caches
    return response


@bp.context_processor
def _template_values() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "user_email": session.get("email"), "user_role": session.get("role"),
            "may": lambda needed: _may(needed)}


def _may(needed: str) -> bool:
    from bot.auth import allows

    return allows(session.get("role", ""), needed)


# -- sign in / out ----------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """A path of this site to go to after login, else the dashboard: browsers drop tabs and newlines from a URL
    ("/\t/evil.example" becomes "//evil.example") and read a backslash as a slash, so none of them may appear."""
    if (target and target.startswith("/") and not target.startswith("//") and "\\" not in target
            and all(" " < ch != "\x7f" for ch in target)):
        return target
    return url_for("console.dashboard")


@bp.get("/login")
def login() -> Any:
    csrf_token()
    return render_template("login.html", next=request.args.get("next", ""), error=None)


@bp.post("/login")
def login_post() -> Any:
    runtime = _runtime()
    email = request.form.get("email", "").strip().lower()
    password = request.form.get("password", "")
    client = request.remote_addr or "unknown"
    now = utcnow()
    target = request.form.get("next", "")
    try:
        user = authenticate(runtime.factory, email, password, client, now)
    except Throttled:
        minutes = int(LOGIN_WINDOW.total_seconds() // 60)
        error = f"Too many failed sign-in attempts. Wait {minutes} minutes and try again."
        return render_template("login.html", next=target, error=error, email=email), 429
    if user is None:
        return render_template("login.html", next=target, error="Wrong e-mail or password.", email=email), 401
    session.clear()  # a new session on sign-in: no fixation
    session.update(user_id=user.id, role=user.role, email=user.email, signed_in_at=now.isoformat())
    csrf_token()
    log.info("console sign-in: user %d (%s)", user.id, user.role)
    return redirect(_safe_next(target))


@bp.post("/logout")
@require_login("viewer")
def logout() -> Any:
    end_sessions(_runtime().factory, session["user_id"], utcnow())  # every session of the account, copies too
    session.clear()
    return redirect(url_for("console.login"))


# -- dashboard --------------------------------------------------------------------------------------------


def _day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def real_learners() -> Any:
    """Learners who are not the browser simulator's (or `vereda chat`'s): the simulator keeps its learners on the
    console transport, so a simulated learner has a console address and no other (as `simulator_post` decides)."""
    another = aliased(LearnerAddress)
    other = select(another.id).where(another.learner_id == LearnerAddress.learner_id,
                                     another.channel != SIMULATED).exists()
    return Learner.id.not_in(select(LearnerAddress.learner_id).where(LearnerAddress.channel == SIMULATED, ~other))


def dashboard_numbers(db: Session, now: datetime) -> dict[str, Any]:
    """What the dashboard shows, as of `now` (days are UTC days). The simulator's learners and messages (console
    transport) are not counted."""
    today = _day_start(now)
    # An active enrolment of a learner who has not opted out; the simulator's enrolments are on the console
    # transport. NOT EXISTS of an opted-out learner equals joining the learner (every enrolment has one), and lets
    # the database read the active enrolments from ix_enrolments_state_channel alone.
    opted_out = (select(Learner.id).where(Learner.id == Enrolment.learner_id, Learner.opted_out_at.is_not(None))
                 .exists())
    active = (Enrolment.state == "active", Enrolment.channel != SIMULATED, ~opted_out)
    # Distinct learners per channel: here the opted-out learners are a hashed list (NOT IN, learner ids are never
    # NULL), a filter that keeps the index's (channel, learner_id) order, so no sort is needed to group (after the
    # anti-join it was, and on 80,000 rows it spilled to disk).
    not_opted_out = Enrolment.learner_id.not_in(select(Learner.id).where(Learner.opted_out_at.is_not(None)))
    by_channel = {str(key): int(count) for key, count in db.execute(
        select(Enrolment.channel, func.count(func.distinct(Enrolment.learner_id)))
        .where(Enrolment.state == "active", Enrolment.channel != SIMULATED, not_opted_out)
        .group_by(Enrolment.channel))}
    # one enrolment per learner and course (unique), so counting enrolments counts distinct learners
    by_course = {str(key): int(count) for key, count in db.execute(
        select(Enrolment.course_id, func.count()).where(*active).group_by(Enrolment.course_id))}
    active_learners = db.scalar(select(func.count()).select_from(Learner).where(
        Learner.opted_out_at.is_(None), select(Enrolment.id).where(
            Enrolment.learner_id == Learner.id, Enrolment.state == "active", Enrolment.channel != SIMULATED)
        .exists())) or 0
    lessons = dict.fromkeys(("queued", "sent", "delivered", "failed", "unknown", "cancelled"), 0)
    for status, count in db.execute(
            select(OutboundMessage.status, func.count()).where(
                OutboundMessage.kind == "lesson", OutboundMessage.created_at >= today,
                OutboundMessage.channel != SIMULATED)
            .group_by(OutboundMessage.status)):
        outcome = broadcasts.OUTCOMES.get(status, status)
        lessons[outcome] = lessons.get(outcome, 0) + int(count)
    def counted(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    opted_out_total, opted_out_today = db.execute(
        select(func.count(), counted(Learner.opted_out_at >= today))
        .where(Learner.opted_out_at.is_not(None), real_learners())).one()
    whatsapp_all, whatsapp_open = db.execute(
        select(func.count(), counted(LearnerAddress.last_inbound_at > now - WHATSAPP_WINDOW))
        .where(LearnerAddress.channel == "whatsapp")).one()
    backlog = dict.fromkeys(BACKLOG_STATUSES, 0)  # "held" is also the WhatsApp lessons waiting for the learner
    for status, count in db.execute(select(OutboundMessage.status, func.count())
                                    .where(OutboundMessage.status.in_(BACKLOG_STATUSES))
                                    .group_by(OutboundMessage.status)):
        backlog[status] = int(count)
    held = backlog["held"]
    due, oldest = db.execute(select(func.count(), func.min(OutboundMessage.next_attempt_at)).where(
        OutboundMessage.status == "queued", OutboundMessage.next_attempt_at <= now)).one()
    return {
        "active_learners": int(active_learners), "active_by_channel": dict(sorted(by_channel.items())),
        "active_by_course": dict(sorted(by_course.items())), "lessons_today": lessons,
        "opted_out_today": int(opted_out_today), "opted_out_total": int(opted_out_total),
        "whatsapp": {"open": int(whatsapp_open), "closed": int(whatsapp_all) - int(whatsapp_open),
                     "held": int(held)},
        "backlog": backlog, "backlog_due": int(due),
        "backlog_oldest_minutes": int((now - oldest).total_seconds() // 60) if oldest else None,
    }


def bars(items: Iterable[tuple[str, float]], width: int = 420, unit: str = "", maximum: float | None = None,
         ) -> dict[str, Any]:
    """Geometry of a horizontal SVG bar chart (labels and values go through the template, escaped)."""
    rows = list(items)
    top = maximum if maximum is not None else max([value for _, value in rows] + [1])
    top = top or 1
    label_w, bar_w, row_h = 170, width - 170 - 60, 22
    drawn = [{"label": label, "value": value, "y": i * row_h, "w": round(bar_w * value / top, 1),
              "text": f"{value:g}{unit}"} for i, (label, value) in enumerate(rows)]
    return {"rows": drawn, "width": width, "height": max(row_h * len(rows), row_h), "label_w": label_w,
            "row_h": row_h}


@bp.get("/")
@require_login("viewer")
def dashboard() -> Any:
    runtime = _runtime()
    now = utcnow()
    with runtime.factory() as db:
        numbers = dashboard_numbers(db, now)
    titles = {course.id: course.title.get("es") or course.id for course in runtime.catalog.courses}
    return render_template(
        "dashboard.html", n=numbers, now=now, titles=titles, courses=runtime.catalog.courses,
        channel_chart=bars(numbers["active_by_channel"].items()),
        course_chart=bars((titles.get(key, key), value) for key, value in numbers["active_by_course"].items()),
        problems=runtime.problems)


# -- learners ---------------------------------------------------------------------------------------------


@bp.get("/learners")
@require_login("viewer")
def learners() -> Any:
    runtime = _runtime()
    error = None
    try:
        filters = reports.LearnerFilter.parse(request.args, runtime.catalog)
    except reports.Invalid as invalid:
        filters, error = reports.LearnerFilter(), f"{invalid.field}: {invalid}"
    page = whole_number(request.args.get("page"), MAX_PAGE) or 1
    with runtime.factory() as db:
        # Lists always mask phone numbers, whoever reads them.
        listing = reports.list_learners(db, runtime.catalog, filters, page, PER_PAGE,
                                        lambda address: mask_address(address, "viewer"))
    args = {key: value for key, value in request.args.items() if key != "page" and value}
    return render_template("learners.html", listing=listing, filters=filters, error=error, args=args,
                           courses=runtime.catalog.courses, channels=broadcasts.CHANNELS,
                           progress=broadcasts.PROGRESS)


@bp.get("/learners/<id:learner_id>")
@require_login("viewer")
def learner(learner_id: int) -> Any:
    runtime = _runtime()
    role = g.role
    with runtime.factory() as db:
        try:
            detail = reports.learner_detail(db, runtime.catalog, learner_id,
                                            lambda address: mask_address(address, role))
        except reports.Missing:
            abort(404)
    enrolled = {item["course"] for item in detail["enrolments"]}
    return render_template("learner.html", learner=detail, courses=runtime.catalog.courses,
                           available=[c for c in runtime.catalog.courses if c.id not in enrolled],
                           titles={c.id: c.title.get("es") or c.id for c in runtime.catalog.courses})


@bp.post("/learners/<id:learner_id>")
@require_login("coordinator")
def learner_change(learner_id: int) -> Any:
    runtime = _runtime()
    action = request.form.get("action", "")
    now = utcnow()
    try:
        if action == "enrol":
            result = reports.enrol(runtime.factory, runtime.context(now), runtime.senders, learner_id,
                                   request.form.get("course", ""), request.form.get("channel") or None)
            flash(f"Enrolled in {result['course']}: lesson 1 {result['status']} on {result['channel']}.")
        elif action == "unenrol":
            result = reports.unenrol(runtime.factory, learner_id, request.form.get("course", ""), now)
            flash(f"Unenrolled from {result['course']}; {result['withdrawn']} waiting message(s) withdrawn.")
        elif action == "tag":
            added, _tags = reports.add_tag(runtime.factory, learner_id, request.form.get("tag", ""))
            flash("Tag added." if added else "The learner already had that tag.")
        elif action == "untag":
            removed, _tags = reports.remove_tag(runtime.factory, learner_id, request.form.get("tag", ""))
            flash("Tag removed." if removed else "The learner did not have that tag.")
        elif action == "erase":
            if not _may("admin"):
                return ("Erasing a learner needs the admin role.", 403)
            if request.form.get("confirm") != "ERASE":
                flash("Type ERASE to confirm erasing this learner.", "error")
                return redirect(url_for("console.learner", learner_id=learner_id))
            reports.erase(runtime.factory, learner_id)
            log.info("learner %d erased from the console by %s", learner_id, session.get("email"))
            flash(f"Learner {learner_id} erased.")
            return redirect(url_for("console.learners"))
        else:
            abort(400, f"unknown action {action!r}")
    except reports.Missing:
        abort(404)
    except (reports.Invalid, reports.Conflict) as error:
        flash(str(error), "error")
    return redirect(url_for("console.learner", learner_id=learner_id))


# -- courses ----------------------------------------------------------------------------------------------


def course_analysis(db: Session, course: Course) -> dict[str, Any]:
    """The funnel (learners reaching each lesson, finishing, passing) and per-question item analysis, without the
    simulator's enrolments (console transport)."""
    real = (Enrolment.course_id == course.id, Enrolment.channel != SIMULATED)  # not the simulator's enrolments
    positions: dict[int, int] = {}
    states: dict[str, int] = {}
    for position, state, n in db.execute(select(Enrolment.position, Enrolment.state, func.count()).where(*real)
                                         .group_by(Enrolment.position, Enrolment.state)):
        positions[int(position)] = positions.get(int(position), 0) + int(n)
        states[str(state)] = states.get(str(state), 0) + int(n)
    enrolled = sum(positions.values())
    reached = []
    for index, lesson in enumerate(course.lessons):
        count = sum(int(n) for position, n in positions.items() if position >= index)
        reached.append((f"{index + 1}. {lesson.title.get('es') or lesson.slug}", count))
    # what reports.course_stats says of this course, from this course's rows only
    stats = reports.course_summary(course, states, reports.passed_counts(db, [course]).get(course.id, 0))
    finished, passed = stats["stats"]["finished"], stats["stats"]["passed"]
    funnel = [("Enrolled", int(enrolled))] + reached + [("Finished", finished), ("Passed", passed)]
    # Item analysis: the course's answers per question and option, counted from ix_answers_course_item alone (no
    # join), less the simulator's: those are found from its few enrolments. One statement, so one snapshot.
    item = (Answer.lesson, Answer.question, Answer.choice)
    every = select(*item, func.count().label("n")).where(Answer.course_id == course.id).group_by(*item)
    simulated = (select(*item, (-func.count()).label("n")).join(Enrolment, Enrolment.id == Answer.enrolment_id)
                 .where(Answer.course_id == course.id, Enrolment.course_id == course.id,
                        Enrolment.channel == SIMULATED).group_by(*item))
    both = union_all(every, simulated).subquery()
    counts: dict[tuple[int, int], dict[int, int]] = {}
    for lesson_no, question_no, choice_no, count in db.execute(
            select(both.c.lesson, both.c.question, both.c.choice, func.sum(both.c.n))
            .group_by(both.c.lesson, both.c.question, both.c.choice)):
        if count:
            counts.setdefault((int(lesson_no), int(question_no)), {})[int(choice_no)] = int(count)
    items = []
    for li, lesson in enumerate(course.lessons):
        for qi, question in enumerate(lesson.quiz):
            choices = counts.get((li, qi), {})
            answered = sum(choices.values())
            right = choices.get(question.answer, 0)
            wrong = sorted(((n, c) for c, n in choices.items() if c != question.answer and n), reverse=True)
            top_wrong = None
            if wrong:
                n, choice = wrong[0]
                text = question.options[choice - 1].get("es", "") if 0 < choice <= len(question.options) else ""
                top_wrong = {"choice": choice, "text": text, "count": n,
                             "share": round(100 * n / answered) if answered else 0}
            items.append({"lesson": li + 1, "question": qi + 1, "ask": question.ask.get("es", ""),
                          "answered": answered, "right": right,
                          "share": round(100 * right / answered) if answered else None, "top_wrong": top_wrong})
    return {"enrolled": int(enrolled), "funnel": funnel, "items": items, "stats": stats}


@bp.get("/courses")
@require_login("viewer")
def courses() -> Any:
    """Every course with its enrolments by state and passes, and every course folder that failed to load."""
    runtime = _runtime()
    with runtime.factory() as db:
        stats = reports.course_stats(db, runtime.catalog)
    return render_template("courses.html", stats=stats, problems=runtime.problems)


@bp.get("/courses/<course_id>")
@require_login("viewer")
def course(course_id: str) -> Any:
    runtime = _runtime()
    found = runtime.catalog.get(course_id)
    if found is None:
        abort(404)
    with runtime.factory() as db:
        analysis = course_analysis(db, found)
    item_chart = bars(((f"L{i['lesson']} Q{i['question']}", i["share"] or 0) for i in analysis["items"]),
                      unit="%", maximum=100)
    return render_template("course.html", course=found, a=analysis, funnel_chart=bars(analysis["funnel"]),
                           item_chart=item_chart)


# -- broadcasts -------------------------------------------------------------------------------------------


def _composer_form() -> dict[str, str]:
    keys = ("text_es", "text_en", "course", "channel", "language", "tag", "progress", "template", "send_at")
    source = request.form if request.method == "POST" else request.args
    return {key: (source.get(key) or "").strip() for key in keys}


def _templates(runtime: Runtime) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for course in runtime.catalog.courses:
        if course.whatsapp_template:
            seen.setdefault(course.whatsapp_template, course.title.get("es") or course.id)
    return sorted(seen.items())


def _parse_composer(form: dict[str, str], runtime: Runtime, now: datetime) -> tuple[
        dict[str, str], dict[str, str], datetime, str | None]:
    text = {"es": form["text_es"], "en": form["text_en"]}
    segment = {key: form[key] for key in ("course", "channel", "language", "tag", "progress")}
    text, segment = broadcasts.validate(text, segment, runtime.catalog)
    template = form["template"] or None
    if template and not CONTENT_SID.match(template):
        raise broadcasts.BroadcastError("template: a WhatsApp Content SID looks like HX followed by 32 hex digits")
    send_at = now
    if form["send_at"]:
        try:
            parsed = datetime.fromisoformat(form["send_at"])
        except ValueError:
            raise broadcasts.BroadcastError("send_at: use a date and time (UTC)") from None
        send_at = broadcasts.check_send_at(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC), now)
    return text, segment, send_at, template


def _broadcast_page(form: dict[str, str], status: int = 200, **values: Any) -> Any:
    runtime = _runtime()
    page = whole_number(request.args.get("page"), MAX_PAGE) or 1
    with runtime.factory() as db:
        listing = reports.list_broadcasts(db, page, PER_PAGE)
    return render_template("broadcasts.html", listing=listing, form=form, courses=runtime.catalog.courses,
                           channels=broadcasts.CHANNELS, progress=broadcasts.PROGRESS,
                           templates=_templates(runtime), **values), status


@bp.get("/broadcasts")
@require_login("viewer")
def broadcast_list() -> Any:
    return _broadcast_page(_composer_form())


@bp.post("/broadcasts")
@require_login("coordinator")
def broadcast_compose() -> Any:
    runtime = _runtime()
    form = _composer_form()
    now = utcnow()
    try:
        text, segment, send_at, template = _parse_composer(form, runtime, now)
    except broadcasts.BroadcastError as error:
        return _broadcast_page(form, 400, error=str(error))
    if request.form.get("action") != "send":
        with runtime.factory() as db:
            preview = broadcasts.preview(db, text, segment)
        lines = preview.lines(runtime.settings.message_prices, runtime.settings.price_currency, runtime.senders)
        return _broadcast_page(form, preview=preview, preview_lines=lines, send_at=send_at)
    broadcast_id = broadcasts.create(runtime.factory, text, segment, send_at, runtime.catalog, now,
                                     whatsapp_template=template, created_by=session.get("email"))
    log.info("broadcast %d created from the console by %s", broadcast_id, session.get("email"))
    flash(f"Broadcast {broadcast_id} created; it goes out at {send_at:%Y-%m-%d %H:%M} UTC.")
    return redirect(url_for("console.broadcast", broadcast_id=broadcast_id))


@bp.get("/console/estimate")
@require_login("coordinator")
def estimate() -> Any:
    """Live recipients and SMS encoding for the composer (JSON; reads only)."""
    runtime = _runtime()
    form = _composer_form()
    sms = {}
    for language in ("es", "en"):
        info = analyse(form[f"text_{language}"])
        sms[language] = {"encoding": info.encoding, "units": info.units, "segments": info.segments,
                         "ucs2_chars": list(info.ucs2_chars)}
    try:
        text, segment = broadcasts.validate({"es": form["text_es"] or " x", "en": form["text_en"]},
                                            {k: form[k] for k in ("course", "channel", "language", "tag",
                                                                  "progress")}, runtime.catalog)
    except broadcasts.BroadcastError as error:
        return jsonify({"error": str(error), "sms": sms}), 400
    if not (form["text_es"] or form["text_en"]):
        text = {"es": ""}
    with runtime.factory() as db:
        preview = broadcasts.preview(db, text, segment)
    costs = preview.costs(runtime.settings.message_prices)
    return jsonify({"recipients": preview.recipients, "total": sum(preview.recipients.values()), "sms": sms,
                    "sms_segments": preview.sms_segments, "cost": {
                        "by_channel": costs, "total": round(sum(costs.values()), 4),
                        "currency": runtime.settings.price_currency} if costs else None})


def broadcast_by_channel(db: Session, broadcast_id: int) -> dict[str, dict[str, int]]:
    """Recipients per channel and outcome (queued, sent, delivered, failed, unknown, cancelled)."""
    out: dict[str, dict[str, int]] = {}
    for channel, status, count in db.execute(
            select(OutboundMessage.channel, OutboundMessage.status,
                   func.count(func.distinct(OutboundMessage.learner_id)))
            .where(OutboundMessage.broadcast_id == broadcast_id)
            .group_by(OutboundMessage.channel, OutboundMessage.status)):
        row = out.setdefault(channel, dict.fromkeys(("queued", "sent", "delivered", "failed", "unknown",
                                                     "cancelled"), 0))
        outcome = broadcasts.OUTCOMES.get(status, status)
        row[outcome] = row.get(outcome, 0) + int(count)
    return out


@bp.get("/broadcasts/<id:broadcast_id>")
@require_login("viewer")
def broadcast(broadcast_id: int) -> Any:
    runtime = _runtime()
    with runtime.factory() as db:
        try:
            detail = reports.broadcast_detail(db, broadcast_id)
        except reports.Missing:
            abort(404)
        channels = broadcast_by_channel(db, broadcast_id)
    chart = bars((outcome, count) for outcome, count in detail["counts"].items())
    return render_template("broadcast.html", b=detail, channels=channels, chart=chart)


@bp.post("/broadcasts/<id:broadcast_id>/cancel")
@require_login("coordinator")
def broadcast_cancel(broadcast_id: int) -> Any:
    runtime = _runtime()
    try:
        done = broadcasts.cancel(runtime.factory, broadcast_id, utcnow())
    except broadcasts.AlreadySent as error:
        flash(f"{str(error)[0].upper()}{str(error)[1:]}.")
    except broadcasts.BroadcastError:
        abort(404)
    else:
        flash("This broadcast was already cancelled." if done.already
              else f"Broadcast cancelled; {done.withdrawn} waiting message(s) withdrawn.")
    return redirect(url_for("console.broadcast", broadcast_id=broadcast_id))


# -- simulator --------------------------------------------------------------------------------------------


def _simulated(channel: str, address: str) -> tuple[str, dict[str, Any]]:
    """The envelope address and learner key for a simulated learner; BadAddress when unusable."""
    if channel == "telegram":
        if whole_number(address.removeprefix("-"), 2**63 - 1) is None:  # Telegram's ids fit 64 bits
            raise BadAddress("a Telegram chat id is a whole number (64-bit, not 0)")
        return address, {"telegram_chat_id": int(address)}
    phone = e164(address.removeprefix("whatsapp:"))
    return (f"whatsapp:{phone}" if channel == "whatsapp" else phone), {"phone": phone}


def _simulator_learner(db: Session, key: dict[str, Any]) -> Learner | None:
    column, value = next(iter(key.items()))
    return db.scalars(select(Learner).where(getattr(Learner, column) == value)).first()


def transcript(db: Session, learner_id: int) -> list[dict[str, Any]]:
    """The learner's messages in and out (console transport only, as the simulator shows them)."""
    inbound = db.execute(select(InboundMessage.id, InboundMessage.body, InboundMessage.received_at)
                         .where(InboundMessage.learner_id == learner_id)).all()
    outbound = db.execute(select(OutboundMessage.id, OutboundMessage.body, OutboundMessage.created_at,
                                 OutboundMessage.status)
                          .where(OutboundMessage.learner_id == learner_id, OutboundMessage.channel == "console")).all()
    lines = [{"direction": "in", "text": r.body or "", "at": r.received_at, "order": (r.received_at, 0, r.id)}
             for r in inbound]
    lines += [{"direction": "out", "text": r.body, "at": r.created_at, "status": r.status,
               "order": (r.created_at, 1, r.id)} for r in outbound]
    lines.sort(key=lambda line: line["order"])
    return lines[-200:]


def _simulator_params() -> tuple[str, str]:
    source = request.form if request.method == "POST" else request.args
    channel = source.get("channel") or session.get("sim_channel") or "whatsapp"
    if channel not in SIMULATOR_CHANNELS:
        channel = "whatsapp"
    address = (source.get("address") or "").strip()
    if not address:
        remembered = session.get("sim_address") if session.get("sim_channel") == channel else None
        address = str(remembered or SIMULATOR_DEFAULTS[channel])
    return channel, address


@bp.get("/simulator")
@require_login("coordinator")
def simulator() -> Any:
    runtime = _runtime()
    channel, address = _simulator_params()
    lines: list[dict[str, Any]] = []
    error = None
    try:
        _to, key = _simulated(channel, address)
    except BadAddress as bad:
        error, key = str(bad), {}
    if key:
        with runtime.factory() as db:
            found = _simulator_learner(db, key)
            if found is not None:
                lines = transcript(db, found.id)
    return render_template("simulator.html", channel=channel, address=address, lines=lines, error=error,
                           channels=SIMULATOR_CHANNELS, courses=runtime.catalog.courses)


@bp.post("/simulator")
@require_login("coordinator")
def simulator_post() -> Any:
    """One message from the simulated learner: the real conversation, replies kept on the console transport."""
    runtime = _runtime()
    channel, address = _simulator_params()
    text = request.form.get("text", "")
    try:
        to, key = _simulated(channel, address)
    except BadAddress as bad:
        return render_template("simulator.html", channel=channel, address=address, lines=[], error=str(bad),
                               channels=SIMULATOR_CHANNELS, courses=runtime.catalog.courses), 400
    with runtime.factory() as db:
        found = _simulator_learner(db, key)
        real = found is not None and db.scalar(select(func.count()).select_from(LearnerAddress).where(
            LearnerAddress.learner_id == found.id, LearnerAddress.channel != "console"))
    if real:
        error = "That address belongs to a real learner; the simulator only plays fictional ones (e.g. +1555555…)."
        return render_template("simulator.html", channel=channel, address=address, lines=[], error=error,
                               channels=SIMULATOR_CHANNELS, courses=runtime.catalog.courses), 409
    console = ConsoleSender(lambda _body: None)
    envelope = Envelope(channel=channel, provider_id=f"sim-{uuid.uuid4().hex}", address=to, text=text,
                        telegram_chat_id=key.get("telegram_chat_id"))
    receive(runtime.factory, envelope, runtime.context(utcnow()), {"console": console}, transport="console")
    Outbox(runtime.factory, {"console": console}).dispatch(utcnow)  # nothing reaches a provider
    session["sim_channel"], session["sim_address"] = channel, address
    return redirect(url_for("console.simulator", channel=channel, address=address))
