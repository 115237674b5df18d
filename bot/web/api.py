"""The coordinators' API under /api/v1: JSON, bearer tokens, errors as {"error": …, "field": …}.

Views only parse the request, call one function (bot.reports, bot.broadcasts) and answer JSON.
Roles: viewer reads; coordinator also enrols, tags, broadcasts and exports; admin also erases and sees
phone numbers unmasked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context, url_for
from werkzeug.exceptions import HTTPException

from bot import broadcasts, reports
from bot.catalog import CONTENT_SID
from bot.config import Settings
from bot.dispatcher import utcnow
from bot.keywords import whole_number
from bot.reports import Conflict, Invalid, Missing
from bot.runtime import Runtime
from bot.web import MAX_PAGE, openapi
from bot.web.access import api_error, mask_address, require_token

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
PER_PAGE, MAX_PER_PAGE = 50, 500
BROADCAST_FIELDS = ("text", "segment", "send_at", "whatsapp_template")


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["vereda"]
    return runtime


def _show() -> reports.Show:
    """Phone numbers and chat ids as this token's role may see them: the last 4 digits unless admin."""
    role = g.role
    return lambda address: mask_address(address, role)


def _page() -> tuple[int, int]:
    values = []
    for name, default, top in (("page", 1, MAX_PAGE), ("per_page", PER_PAGE, MAX_PER_PAGE)):
        value = whole_number(request.args.get(name, "").strip() or str(default), top)
        if value is None:
            raise Invalid(name, f"a whole number from 1 to {top:,}")
        values.append(value)
    return values[0], values[1]


def _body() -> dict[str, Any]:
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes
        body = None
    if not isinstance(body, dict):
        raise Invalid("", "send a JSON object (Content-Type: application/json)")
    return body


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Invalid(name, "required: a non-empty string")
    return value.strip()


@bp.errorhandler(Invalid)
def _invalid(error: Invalid) -> Any:
    return api_error(400, str(error), error.field)


@bp.errorhandler(Missing)
def _missing(error: Missing) -> Any:
    return api_error(404, str(error))


@bp.errorhandler(Conflict)
def _conflict(error: Conflict) -> Any:
    return api_error(409, str(error), error.field)


@bp.errorhandler(broadcasts.BroadcastError)
def _broadcast_error(error: broadcasts.BroadcastError) -> Any:
    field, _, _message = str(error).partition(":")  # its messages start with the field: "segment.course: …"
    return api_error(400, str(error), field if field.replace(".", "").replace("_", "").isalpha() else None)


@bp.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Any:
    """Unknown routes, wrong methods, oversized bodies under /api/ answer JSON too; elsewhere nothing changes."""
    if not request.path.startswith("/api/") or error.code is None:
        return error
    response, status = api_error(error.code, error.description or error.name)
    for key, value in error.get_headers():
        if key.lower() != "content-type":  # keeps Allow on a 405
            response.headers[key] = value
    return response, status


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["X-Content-Type-Options"] = "nosniff"  # JSON and CSV are never sniffed into HTML
    response.headers["Cache-Control"] = "no-store"  # learners' data stays out of shared caches
    return response


# -- routes ---------------------------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document() -> Any:
    return jsonify(openapi.document())


@bp.get("/learners")
@require_token("viewer")
def learners() -> Any:
    runtime = _runtime()
    filters = reports.LearnerFilter.parse(request.args, runtime.catalog)
    page, per_page = _page()
    with runtime.factory() as session:
        return jsonify(reports.list_learners(session, runtime.catalog, filters, page, per_page, _show()))


@bp.get("/learners/<id:learner_id>")
@require_token("viewer")
def learner(learner_id: int) -> Any:
    runtime = _runtime()
    with runtime.factory() as session:
        return jsonify(reports.learner_detail(session, runtime.catalog, learner_id, _show()))


@bp.delete("/learners/<id:learner_id>")
@require_token("admin")
def erase_learner(learner_id: int) -> Any:
    reports.erase(_runtime().factory, learner_id)
    return jsonify(erased=learner_id)


@bp.post("/learners/<id:learner_id>/enrolments")
@require_token("coordinator")
def enrol(learner_id: int) -> Any:
    body = _body()
    course = _text(body, "course")
    channel = body.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise Invalid("channel", "a channel name: sms, whatsapp or telegram")
    runtime = _runtime()
    done = reports.enrol(runtime.factory, runtime.context(utcnow()), runtime.senders, learner_id, course,
                         channel or None)
    runtime.dispatcher.wake()
    return jsonify(done), 201


@bp.delete("/learners/<id:learner_id>/enrolments/<course_id>")
@require_token("coordinator")
def unenrol(learner_id: int, course_id: str) -> Any:
    return jsonify(reports.unenrol(_runtime().factory, learner_id, course_id, utcnow()))


@bp.post("/learners/<id:learner_id>/tags")
@require_token("coordinator")
def add_tag(learner_id: int) -> Any:
    added, tags = reports.add_tag(_runtime().factory, learner_id, _text(_body(), "tag"))
    return jsonify(tags=tags), 201 if added else 200


@bp.delete("/learners/<id:learner_id>/tags/<tag>")
@require_token("coordinator")
def remove_tag(learner_id: int, tag: str) -> Any:
    removed, tags = reports.remove_tag(_runtime().factory, learner_id, tag)
    return jsonify(removed=removed, tags=tags)


@bp.get("/broadcasts")
@require_token("viewer")
def broadcast_list() -> Any:
    page, per_page = _page()
    with _runtime().factory() as session:
        return jsonify(reports.list_broadcasts(session, page, per_page))


def _broadcast_request(body: dict[str, Any]) -> tuple[dict[str, str], dict[str, str], datetime | None, str | None]:
    """text, segment, send_at and template of a broadcast request, each checked for its type."""
    for name in body:
        if name not in BROADCAST_FIELDS:
            raise Invalid(name, f"unknown field (use {', '.join(BROADCAST_FIELDS)})")
    text, segment = body.get("text"), body.get("segment") or {}
    if not isinstance(text, dict):
        raise Invalid("text", 'an object of texts by language, e.g. {"es": "…", "en": "…"}')
    if not isinstance(segment, dict):
        raise Invalid("segment", "an object: course, channel, language, tag, progress")
    for prefix, values in (("text", text), ("segment", segment)):
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise Invalid(f"{prefix}.{key}", "a string")
    send_at = None
    if body.get("send_at") is not None:
        try:
            send_at = datetime.fromisoformat(str(body["send_at"]))
        except ValueError:
            raise Invalid("send_at", "an ISO-8601 time, e.g. 2026-06-02T09:00:00-06:00, or null for now") from None
        if send_at.tzinfo is None:
            raise Invalid("send_at", "give the UTC offset (e.g. Z or -06:00)")
    template = body.get("whatsapp_template")
    if template is not None and (not isinstance(template, str) or not CONTENT_SID.match(template)):
        raise Invalid("whatsapp_template", 'a Twilio Content SID ("HX" and 32 hex characters)')
    return ({k: v for k, v in text.items() if v}, {k: v for k, v in segment.items() if v}, send_at,
            template or None)


@bp.post("/broadcasts")
@require_token("coordinator")
def broadcast_create() -> Any:
    text, segment, send_at, template = _broadcast_request(_body())
    runtime, now = _runtime(), utcnow()
    broadcast_id = broadcasts.create(runtime.factory, text, segment, send_at or now, runtime.catalog, now,
                                     whatsapp_template=template, created_by=f"api:{g.role}")
    log.info("broadcast %d created through the API (%s)", broadcast_id, g.role)
    response = jsonify(id=broadcast_id)
    response.headers["Location"] = url_for("api.broadcast", broadcast_id=broadcast_id)
    return response, 201


@bp.post("/broadcasts/preview")
@require_token("coordinator")
def broadcast_preview() -> Any:
    text, segment, _send_at, _template = _broadcast_request(_body())
    runtime = _runtime()
    text, segment = broadcasts.validate(text, segment, runtime.catalog)
    with runtime.factory() as session:
        found = broadcasts.preview(session, text, segment)
    return jsonify(
        recipients={"total": sum(found.recipients.values()), "by_channel": found.recipients},
        sms={language: {"encoding": encoding, "segments": segments, "ucs2_chars": list(chars)}
             for language, (encoding, segments, chars) in found.sms.items()},
        sms_segments=found.sms_segments,
        estimated_cost=_cost(found, runtime.settings),
        # channels with recipients that this server does not send on (not configured): they would get nothing
        channels_off=found.channels_off(runtime.senders),
    )


def _cost(found: broadcasts.Preview, settings: Settings) -> dict[str, Any] | None:
    """The estimate in money with MESSAGE_PRICES set (null without prices)."""
    costs = found.costs(settings.message_prices)
    if not costs:
        return None
    return {"by_channel": costs, "total": round(sum(costs.values()), 4), "currency": settings.price_currency}


@bp.get("/broadcasts/<id:broadcast_id>")
@require_token("viewer")
def broadcast(broadcast_id: int) -> Any:
    with _runtime().factory() as session:
        return jsonify(reports.broadcast_detail(session, broadcast_id))


@bp.post("/broadcasts/<id:broadcast_id>/cancel")
@require_token("coordinator")
def broadcast_cancel(broadcast_id: int) -> Any:
    try:
        done = broadcasts.cancel(_runtime().factory, broadcast_id, utcnow())
    except broadcasts.AlreadySent as error:
        raise Conflict(None, str(error)) from None
    except broadcasts.BroadcastError as error:  # its other refusal: no such broadcast
        raise Missing(str(error)) from None
    if done.already:
        return jsonify(id=broadcast_id, state="cancelled", withdrawn=0, already_cancelled=True)
    log.info("broadcast %d cancelled through the API; %d message(s) withdrawn", broadcast_id, done.withdrawn)
    return jsonify(id=broadcast_id, state="cancelled", withdrawn=done.withdrawn)


@bp.get("/courses")
@require_token("viewer")
def courses() -> Any:
    runtime = _runtime()
    with runtime.factory() as session:
        return jsonify(items=reports.course_stats(session, runtime.catalog))


def _csv(chunks: Iterator[str], name: str) -> Response:
    """A CSV download streamed chunk by chunk as the batches are read."""
    response = Response(stream_with_context(chunks), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="vereda-{name}.csv"'
    return response


@bp.get("/exports/progress.csv")
@require_token("coordinator")
def export_progress() -> Response:
    runtime = _runtime()
    return _csv(reports.export_progress(runtime.factory, runtime.catalog, _show()), "progress")


@bp.get("/exports/answers.csv")
@require_token("coordinator")
def export_answers() -> Response:
    return _csv(reports.export_answers(_runtime().factory, _show()), "answers")
