"""API keys: who is calling, and so which runs are theirs.

A key is `gj_` and 32 random bytes (URL-safe base64). The database keeps its SHA-256 only:
the key is random, so a fast hash is enough (there is no dictionary of likely keys to try).
A caller sends `Authorization: Bearer <key>`; a browser's WebSocket, which cannot set
headers, may send `?token=<key>`. Every request looks its key up again, so a revoked key
stops working at once. The key's name is the owner: a run belongs to the name that created
it, and for anyone else it does not exist (404, the socket closes with 4404).

With no key in the database, ever, the server is open: every caller is the one anonymous
owner (None) and sees every run. Once a key has been made the server stays closed, even if
every key is revoked (revoking the last key must not hand everyone the owners' runs). `gptjobs serve`/`up` refuse to start open on an address
other than loopback (unless GPTJOBS_ALLOW_OPEN), and say so when they start open on it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from starlette.concurrency import run_in_threadpool

from api.db import ApiKey, Database, K

BEARER = "bearer "


class Unauthorized(Exception):
    pass


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(db: Database, name: str) -> tuple[ApiKey, str]:
    key = "gj_" + secrets.token_urlsafe(32)
    row = ApiKey(id=secrets.token_hex(4), name=name, key_hash=_hash(key), created_at=time.time())
    with db.transaction() as s:
        s.add(row)
    return row, key


def list_keys(db: Database) -> list[ApiKey]:
    with db.session() as s:
        return list(s.execute(select(ApiKey).order_by(K.name, K.created_at)).scalars())


def revoke(db: Database, key_id: str | None = None, name: str | None = None) -> int:
    """Revoke one key by id, or every key of a name; returns how many."""
    cond = K.id == key_id if key_id else K.name == name
    with db.transaction() as s:
        res = s.execute(update(ApiKey).where(cond, K.revoked_at.is_(None)).values(revoked_at=time.time()))
        return int(res.rowcount)  # type: ignore[attr-defined]


ANY_KEY = select(K.id).limit(1)  # revoked ones too: once a key was made, the server stays closed


def open_mode(db: Database) -> bool:
    with db.session() as s:
        return s.execute(ANY_KEY).first() is None


def owner_of(db: Database, key: str | None) -> str | None:
    """The owner a key names; None in open mode. Raises Unauthorized saying what is wrong."""
    with db.session() as s:
        if key:
            name = s.execute(select(K.name).where(K.key_hash == _hash(key), K.revoked_at.is_(None))).scalar()
            if name is None:
                raise Unauthorized("unknown or revoked API key")
            return name
        if s.execute(ANY_KEY).first() is not None:
            raise Unauthorized("this server needs an API key: send `Authorization: Bearer <key>`")
    return None


def presented_key(authorization: str | None, token: str | None = None) -> str | None:
    if authorization:
        if not authorization.lower().startswith(BEARER):
            raise Unauthorized("Authorization must be `Bearer <key>`")
        return authorization[len(BEARER) :].strip()
    return token or None


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def open_here(scope: Any, allow_open: bool) -> bool:
    """May an open-mode server answer on the address this request came in on? `gptjobs serve`
    refuses to start open elsewhere; this holds however the app was started (plain uvicorn)."""
    host = (scope.get("server") or ("", None))[0]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True  # a Unix socket, or an in-process test client: nothing to check
    return loopback(host) or allow_open


OPEN_REFUSED = "this server has no API keys, so it answers only on loopback (create one: gptjobs keys create)"
KEY_RECHECK_S = 5.0  # a stream that outlives its key's revocation ends within this


class Refused(Exception):
    """This caller may not use the server: the HTTP status, and the WebSocket close code."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail

    @property
    def ws_code(self) -> int:
        return 4000 + self.status  # 4401, 4403: the HTTP status in the application's range


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the owner their key names (None in open mode) and that key."""

    owner: str | None
    key: str | None

    async def revoked(self, db: Database) -> bool:
        """For long-lived streams: does the key still name the owner it named at the start?"""
        try:
            return await run_in_threadpool(owner_of, db, self.key) != self.owner
        except Unauthorized:
            return True


async def identify(db: Database, scope: Any, allow_open: bool, authorization: str | None, token: str | None) -> Caller:
    """The caller of a request or WebSocket, or Refused (401 for a missing, unknown or
    revoked key; 403 for an open-mode server reached on a non-loopback address)."""
    try:
        key = presented_key(authorization, token)
        owner = await run_in_threadpool(owner_of, db, key)
    except Unauthorized as e:
        raise Refused(401, str(e)) from None
    if owner is None and not open_here(scope, allow_open):
        raise Refused(403, OPEN_REFUSED)
    return Caller(owner, key)


class RedactTokens(logging.Filter):
    """Keeps `?token=<key>` (how browsers authenticate a WebSocket) out of uvicorn's logs."""

    PATTERN = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        return True


def redact_server_logs() -> None:
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
