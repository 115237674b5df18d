"""GET /healthz: 200 when the database answers."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    runtime = current_app.extensions["vereda"]
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        return jsonify(status="error", database=type(error).__name__), 503
    return jsonify(
        status="ok",
        database=runtime.engine.dialect.name,
        courses=[course.id for course in runtime.catalog.courses],
        channels=sorted(runtime.senders),
        course_problems=len(runtime.problems),
    )
