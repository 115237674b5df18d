"""Who may call a route: bearer tokens for /api/v1, a session login for the console, CSRF on forms."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, jsonify, redirect, request, session, url_for

from bot.auth import allows, session_role, token_role
from bot.dispatcher import utcnow

F = TypeVar("F", bound=Callable[..., Any])


def api_error(status: int, message: str, field: str | None = None) -> Any:
    """A JSON error: {"error": message} (and the field at fault, for validation errors)."""
    body: dict[str, str] = {"error": message}
    if field:
        body["field"] = field
    return jsonify(body), status


def require_token(role: str) -> Callable[[F], F]:
    """API routes: 401 without a valid bearer token, 403 when its role may not do this."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return api_error(401, "a bearer token is required (Authorization: Bearer …)")
            runtime = current_app.extensions["vereda"]
            found = token_role(runtime.factory, token.strip(), utcnow())
            if found is None:
                return api_error(401, "invalid or revoked token")
            if not allows(found, role):
                return api_error(403, f"this needs the {role} role; the token has {found}")
            g.role = found
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _signed_in_role() -> str | None:
    """The role of the account this console session signed in as, read from the database on every request: a
    disabled account, or one signed out since (by any of its sessions), has none."""
    user_id, signed_in = session.get("user_id"), session.get("signed_in_at")
    if not isinstance(user_id, int) or not isinstance(signed_in, str):
        return None
    try:
        moment = datetime.fromisoformat(signed_in)
    except ValueError:
        return None
    return session_role(current_app.extensions["vereda"].factory, user_id, moment)


def require_login(role: str = "viewer") -> Callable[[F], F]:
    """Console routes: to the login page when signed out, 403 when the role may not do this."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            current = _signed_in_role()
            if current is None:
                session.clear()
                return redirect(url_for("console.login", next=request.full_path))
            if not allows(current, role):
                return ("You may not do this with your role.", 403)
            g.role = session["role"] = current
            g.email = session.get("email")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def csrf_token() -> str:
    """The session's CSRF token (made on first use); every console form carries it."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


def csrf_ok() -> bool:
    """Whether the posted form (or X-CSRF-Token header) carries this session's CSRF token."""
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf") or ""
    return bool(expected) and hmac.compare_digest(str(sent), str(expected))


def mask_address(address: str | None, role: str) -> str:
    """Phone numbers show their last 4 digits only, unless the reader is an admin."""
    if not address:
        return ""
    if role == "admin":
        return address
    return "•••" + address[-4:]
