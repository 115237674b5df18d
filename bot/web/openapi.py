"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json (kept in step with bot/web/api.py)."""

from __future__ import annotations

from functools import cache
from typing import Any

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: tuple[str, ...] | None = None, **extra: Any) -> Schema:
    """An object schema; every property is required unless `required` says otherwise."""
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required), **extra}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


STR, INT, BOOL, NUM = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}, {"type": "number"}
TIME = _nullable("string", format="date-time")
TEXTS = {"type": "object", "description": "text by language", "additionalProperties": {"type": "string"},
         "example": {"es": "…", "en": "…"}}
CHANNEL = {"type": "string", "enum": ["sms", "whatsapp", "telegram"]}
MASKED = _nullable("string", description="the last 4 digits (•••1234) unless the token is an admin's")
COUNTS = ("queued", "sent", "delivered", "failed", "unknown", "cancelled")

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": STR, "field": {"type": "string", "description": "the request field at fault, "
                                         "for validation errors (e.g. segment.course)"}}, ("error",)),
    "Address": _obj({"channel": CHANNEL, "address": MASKED, "last_inbound_at": TIME}),
    "Enrolment": _obj({
        "course": STR, "channel": CHANNEL, "state": {"type": "string", "enum": ["active", "paused", "finished"]},
        "lesson": {"type": "integer", "description": "1-based number of the lesson delivered last"},
        "lessons": _nullable("integer"), "question": _nullable("integer", description="open quiz question, 1-based"),
        "enrolled_at": TIME, "lesson_sent_at": TIME, "next_due_at": TIME, "finished_at": TIME}),
    "Learner": _obj({
        "id": INT, "phone": MASKED, "telegram_chat_id": MASKED, "language": {"type": "string", "enum": ["es", "en"]},
        "timezone": _nullable("string"), "opted_in": BOOL, "opted_out_at": TIME, "created_at": TIME,
        "channels": {"type": "array", "items": _ref("Address")}, "tags": {"type": "array", "items": STR},
        "enrolments": {"type": "array", "items": _ref("Enrolment")}}),
    "Score": _obj({"right": INT, "answered": INT, "questions": _nullable("integer"), "percent": _nullable("integer"),
                   "passed": _nullable("boolean", description="null until the course is finished")}),
    "Answer": _obj({"course": STR, "lesson": INT, "question": INT, "choice": INT, "correct": BOOL,
                    "answered_at": TIME}),
    "Message": _obj({
        "direction": {"type": "string", "enum": ["in", "out"]}, "channel": STR,
        "text": _nullable("string", description="as written (null once erased); JSON-escaped, render it as text"),
        "at": TIME, "media": INT, "kind": STR, "status": STR, "error_code": _nullable("string")},
        ("direction", "channel", "text", "at")),
    "LearnerDetail": {"allOf": [_ref("Learner"), _obj({
        "enrolments": {"type": "array", "items": {"allOf": [_ref("Enrolment"), _obj({"score": _ref("Score")})]}},
        "answers": {"type": "array", "items": _ref("Answer")},
        "messages": {"type": "array", "items": _ref("Message"), "description": "the latest 50, oldest first"}})]},
    "LearnerPage": _obj({"items": {"type": "array", "items": _ref("Learner")}, "page": INT, "per_page": INT,
                         "total": INT, "next_page": _nullable("integer")}),
    "EnrolRequest": _obj({"course": STR, "channel": CHANNEL}, ("course",), additionalProperties=False),
    "Enrolled": _obj({"learner": INT, "course": STR, "channel": CHANNEL,
                      "status": {"type": "string", "enum": ["queued", "held"],
                                 "description": "held: waits for the learner (WhatsApp 24 h window closed)"},
                      "sends_at": TIME}),
    "Unenrolled": _obj({"learner": INT, "course": STR, "withdrawn": INT}),
    "TagRequest": _obj({"tag": {"type": "string", "pattern": r"^[\w .:-]{1,64}$"}}),
    "Tags": _obj({"tags": {"type": "array", "items": STR}}),
    "TagRemoved": _obj({"removed": BOOL, "tags": {"type": "array", "items": STR}}),
    "Erased": _obj({"erased": INT}),
    "Segment": _obj({key: _nullable("string") for key in ("course", "channel", "language", "tag", "progress")}, (),
                    additionalProperties=False),
    "BroadcastRequest": _obj({
        "text": TEXTS, "segment": _ref("Segment"),
        "send_at": _nullable("string", format="date-time", description="null: now"),
        "whatsapp_template": _nullable("string", description="Twilio Content SID for WhatsApp outside 24 h")},
        ("text",), additionalProperties=False,
        example={"text": {"es": "Taller el lunes", "en": "Workshop on Monday"},
                 "segment": {"course": "seguridad-humana", "channel": "sms", "language": "es", "tag": "cdmx"},
                 "send_at": None}),
    "BroadcastCreated": _obj({"id": INT}),
    "Broadcast": _obj({
        "id": INT, "state": {"type": "string", "enum": ["scheduled", "materialising", "released", "cancelled"]},
        "text": TEXTS, "segment": _ref("Segment"), "whatsapp_template": _nullable("string"), "send_at": TIME,
        "recipients": INT, "created_by": _nullable("string"), "created_at": TIME, "released_at": TIME}),
    "BroadcastDetail": {"allOf": [_ref("Broadcast"), _obj({"counts": _obj({key: INT for key in COUNTS})})]},
    "BroadcastPage": _obj({"items": {"type": "array", "items": _ref("Broadcast")}, "page": INT, "per_page": INT,
                           "total": INT, "next_page": _nullable("integer")}),
    "Preview": _obj({
        "recipients": _obj({"total": INT, "by_channel": {"type": "object", "additionalProperties": INT}}),
        "sms": {"type": "object", "additionalProperties": _obj({
            "encoding": {"type": "string", "enum": ["GSM-7", "UCS-2"]}, "segments": INT,
            "ucs2_chars": {"type": "array", "items": STR}})},
        "sms_segments": INT,
        "estimated_cost": {"oneOf": [{"type": "null"}, _obj({
            "by_channel": {"type": "object", "additionalProperties": NUM}, "total": NUM, "currency": STR})],
            "description": "with MESSAGE_PRICES set: SMS segments and messages times their price"},
        "channels_off": {"type": "array", "items": CHANNEL,
                         "description": "channels with recipients this server does not send on: they get nothing"}}),
    "Cancelled": _obj({"id": INT, "state": {"const": "cancelled"}, "withdrawn": INT,
                       "already_cancelled": {"type": "boolean", "description": "true: it was cancelled before"}},
                      ("id", "state", "withdrawn")),
    "Course": _obj({
        "id": STR, "title": TEXTS, "description": TEXTS, "languages": {"type": "array", "items": STR},
        "channels": {"type": "array", "items": CHANNEL}, "keywords": {"type": "array", "items": STR},
        "lessons": INT, "questions": INT, "pass_mark": NUM, "timezone": STR,
        "schedule": _obj({"days": {"type": "array", "items": STR}, "at": STR}),
        "stats": _obj({key: INT for key in ("enrolled", "active", "paused", "finished", "passed")})}),
    "Courses": _obj({"items": {"type": "array", "items": _ref("Course")}}),
}


def _json(schema: str, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _error(description: str) -> Schema:
    return _json("Error", description)


AUTH_ERRORS = {"401": _error("no valid bearer token"), "403": _error("the token's role may not do this")}


def _op(summary: str, role: str, responses: dict[str, Schema], body: str | None = None,
        parameters: list[Schema] | None = None) -> Schema:
    operation: Schema = {"summary": summary, "description": f"Needs the {role} role (or above).",
                         "responses": responses | AUTH_ERRORS}
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
        operation["responses"] = {"400": _error("invalid request; `field` names the value at fault")} \
            | operation["responses"]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _path(name: str, description: str, kind: Schema = INT) -> Schema:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": kind}


def _query(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


LEARNER = _path("learner_id", "the learner's id")
BROADCAST = _path("broadcast_id", "the broadcast's id")
PAGING = [_query("page", "page number, from 1", {"type": "integer", "minimum": 1, "default": 1}),
          _query("per_page", "learners per page", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50})]
FILTERS = [
    _query("course", "enrolled in this course", STR), _query("channel", "has an address on this channel", CHANNEL),
    _query("language", "learner's language", {"type": "string", "enum": ["es", "en"]}),
    _query("progress", "has an enrolment in this state (in `course` when given)",
           {"type": "string", "enum": ["active", "paused", "finished"]}),
    _query("tag", "carries this tag", STR), _query("opted_in", "true: still receiving; false: opted out", BOOL),
]
NOT_FOUND = {"404": _error("no such learner")}
CSV = {"description": "CSV, streamed", "content": {"text/csv": {"schema": {"type": "string"}}}}

PATHS: dict[str, Schema] = {
    "/api/v1/openapi.json": {"get": {"summary": "This document", "security": [],
                                     "responses": {"200": {"description": "OpenAPI 3.1 document",
                                                           "content": {"application/json": {}}}}}},
    "/api/v1/learners": {"get": _op("Learners, filtered and paginated", "viewer",
                                    {"200": _json("LearnerPage"), "400": _error("invalid filter or page")},
                                    parameters=FILTERS + PAGING)},
    "/api/v1/learners/{learner_id}": {
        "parameters": [LEARNER],
        "get": _op("A learner: progress, score, answers and latest messages", "viewer",
                   {"200": _json("LearnerDetail")} | NOT_FOUND),
        "delete": _op("Erase a learner for real (as their own BORRAR would)", "admin",
                      {"200": _json("Erased")} | NOT_FOUND)},
    "/api/v1/learners/{learner_id}/enrolments": {
        "parameters": [LEARNER],
        "post": _op("Enrol in a course; lesson 1 is queued on the learner's channel", "coordinator",
                    {"201": _json("Enrolled")} | NOT_FOUND
                    | {"409": _error("opted out, already enrolled, or no address on the course's channels")},
                    body="EnrolRequest")},
    "/api/v1/learners/{learner_id}/enrolments/{course_id}": {
        "parameters": [LEARNER, _path("course_id", "the course's id", STR)],
        "delete": _op("Unenrol: the enrolment and its answers are removed, waiting lessons withdrawn",
                      "coordinator", {"200": _json("Unenrolled"), "404": _error("no such learner or enrolment")})},
    "/api/v1/learners/{learner_id}/tags": {
        "parameters": [LEARNER],
        "post": _op("Tag a learner", "coordinator", {"201": _json("Tags", "tag added"),
                                                     "200": _json("Tags", "the learner had the tag already")}
                    | NOT_FOUND, body="TagRequest")},
    "/api/v1/learners/{learner_id}/tags/{tag}": {
        "parameters": [LEARNER, _path("tag", "the tag", STR)],
        "delete": _op("Remove a tag", "coordinator", {"200": _json("TagRemoved")} | NOT_FOUND)},
    "/api/v1/broadcasts": {
        "get": _op("Broadcasts, newest first", "viewer", {"200": _json("BroadcastPage")}, parameters=PAGING),
        "post": _op("Create a broadcast, now (send_at null) or scheduled", "coordinator",
                    {"201": _json("BroadcastCreated", "created; Location names it")}, body="BroadcastRequest")},
    "/api/v1/broadcasts/preview": {
        "post": _op("Recipients per channel, SMS encoding and segments; sends nothing", "coordinator",
                    {"200": _json("Preview")}, body="BroadcastRequest")},
    "/api/v1/broadcasts/{broadcast_id}": {
        "parameters": [BROADCAST],
        "get": _op("A broadcast with recipients counted by outcome", "viewer",
                   {"200": _json("BroadcastDetail"), "404": _error("no such broadcast")})},
    "/api/v1/broadcasts/{broadcast_id}/cancel": {
        "parameters": [BROADCAST],
        "post": _op("Cancel; messages not yet sent are withdrawn", "coordinator",
                    {"200": _json("Cancelled"), "404": _error("no such broadcast")})},
    "/api/v1/courses": {"get": _op("Courses with enrolment stats", "viewer", {"200": _json("Courses")})},
    "/api/v1/exports/progress.csv": {"get": _op("Progress CSV, one row per enrolment", "coordinator",
                                                {"200": CSV})},
    "/api/v1/exports/answers.csv": {"get": _op("Answers CSV, one row per graded first answer", "coordinator",
                                               {"200": CSV})},
}


@cache
def document() -> Schema:
    """The OpenAPI document (built once)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vereda coordinators' API", "version": "1",
                 "description": "Learners, enrolments, tags, broadcasts, course stats and exports. Roles: viewer "
                                "reads; coordinator also enrols, tags, broadcasts and exports; admin also erases "
                                "learners and sees phone numbers unmasked. Errors are JSON: "
                                '{"error": "…", "field": "…"}.'},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "vereda admin create-token --role R"}}},
    }
