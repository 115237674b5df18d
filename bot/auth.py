"""Coordinators' accounts and API tokens: roles, password hashes, bearer tokens, login throttling."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.security import check_password_hash, generate_password_hash

from bot.db import transaction
from bot.models import ApiToken, AppSecret, LoginFailure, User

ROLES = ("viewer", "coordinator", "admin")  # each may do what the ones before it may
LOGIN_WINDOW = timedelta(minutes=15)
LOGIN_MAX_FAILURES = 5  # per account and per client address within the window
MIN_PASSWORD = 10


class AuthError(ValueError):
    """A request about accounts that cannot be done as asked (the message says why)."""


def allows(role: str, needed: str) -> bool:
    """Whether `role` may do what `needed` may."""
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role: {role!r} is not one of {', '.join(ROLES)}")


def create_user(factory: sessionmaker[Session], email: str, role: str, password: str, now: datetime) -> int:
    """A new console account; the password is stored as a scrypt hash."""
    _check_role(role)
    email = email.strip().lower()
    if "@" not in email or len(email) > 254:
        raise AuthError(f"email: {email!r} is not an e-mail address")
    if len(password) < MIN_PASSWORD:
        raise AuthError(f"password: use at least {MIN_PASSWORD} characters")
    with transaction(factory) as session:
        if session.scalar(select(User.id).where(User.email == email)) is not None:
            raise AuthError(f"email: {email} already has an account")
        user = User(email=email, role=role, password_hash=generate_password_hash(password, "scrypt"),
                    created_at=now)
        session.add(user)
        session.flush()
        return user.id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(factory: sessionmaker[Session], role: str, now: datetime, label: str | None = None) -> str:
    """A new bearer token for `role`; the token itself is returned once and never stored."""
    _check_role(role)
    token = "vrd_" + secrets.token_urlsafe(32)
    with transaction(factory) as session:
        session.add(ApiToken(token_hash=hash_token(token), role=role, label=label, created_at=now))
    return token


def revoke_token(factory: sessionmaker[Session], token_id: int, now: datetime) -> bool:
    """Revoke a token; False if it was revoked before (it stays revoked since then)."""
    with transaction(factory) as session:
        row = session.get(ApiToken, token_id)
        if row is None:
            raise AuthError(f"no token {token_id}")
        if row.revoked_at is not None:
            return False
        row.revoked_at = now
        return True


def token_role(factory: sessionmaker[Session], token: str, now: datetime) -> str | None:
    """The role of a valid, unrevoked bearer token, or None."""
    with transaction(factory) as session:
        row = session.scalars(select(ApiToken).where(ApiToken.token_hash == hash_token(token))).first()
        if row is None or row.revoked_at is not None:
            return None
        if row.last_used_at is None or now - row.last_used_at > timedelta(minutes=1):
            row.last_used_at = now  # at most once a minute: no write on every request
        return row.role


def session_role(factory: sessionmaker[Session], user_id: int, signed_in_at: datetime) -> str | None:
    """The account's role for a console session signed in at `signed_in_at`; None when the account is gone or
    disabled, or signed out since (the session cookie is then worth nothing, wherever it was copied)."""
    with factory() as session:
        user = session.get(User, user_id)
        if user is None or user.disabled_at is not None:
            return None
        ended = user.sessions_ended_at
        if ended is not None and ended >= signed_in_at:
            return None
        return user.role


def end_sessions(factory: sessionmaker[Session], user_id: int, now: datetime) -> None:
    """Sign the account out of every console session begun before `now`."""
    with transaction(factory) as session:
        user = session.get(User, user_id)
        if user is not None:
            user.sessions_ended_at = now


class Throttled(AuthError):
    """Too many failed logins lately for this account or address: the password is not even checked."""


def authenticate(factory: sessionmaker[Session], email: str, password: str, client: str,
                 now: datetime) -> User | None:
    """The user for these credentials, or None (and the failure counted); Throttled after too many failures.

    Each attempt is written down before its password is checked, and counts only the attempts written before it:
    forty guesses sent at once get five checks, not forty (a count read first and written after would let all of
    them through). A successful or throttled attempt takes its own rows back out.
    """
    email = email.strip().lower()
    keys = [f"email:{email}", f"client:{client}"]
    with transaction(factory) as session:
        attempt = [LoginFailure(key=key, at=now) for key in keys]
        session.add_all(attempt)
        session.flush()
        mine = [row.id for row in attempt]
    with factory() as session:
        over = any((session.scalar(select(func.count()).where(
            LoginFailure.key == key, LoginFailure.at > now - LOGIN_WINDOW, LoginFailure.id <= row_id)) or 0)
            > LOGIN_MAX_FAILURES for key, row_id in zip(keys, mine, strict=True))
    with transaction(factory) as session:
        if over:
            session.execute(delete(LoginFailure).where(LoginFailure.id.in_(mine)))
            raise Throttled("too many failed sign-in attempts")
        user = session.scalars(select(User).where(User.email == email)).first()
        if user is not None and user.disabled_at is None and check_password_hash(user.password_hash, password):
            session.execute(delete(LoginFailure).where(
                (LoginFailure.key == keys[0]) | LoginFailure.id.in_(mine)))
            return user
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - LOGIN_WINDOW))
        return None


def app_secret(factory: sessionmaker[Session], name: str) -> str:
    """A random secret made once and kept in the database, the same for every process."""
    with transaction(factory) as session:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(insert(AppSecret).values(name=name, value=secrets.token_hex(32))
                        .on_conflict_do_nothing(index_elements=["name"]))
        return session.scalars(select(AppSecret.value).where(AppSecret.name == name)).one()
