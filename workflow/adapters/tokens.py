"""API tokens: ``avrr_<prefix>_<secret>``, shown once, kept as a SHA-256 digest with expiry."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, insert, or_, select, update

from workflow.adapters import tables as tb
from workflow.adapters.db import writing
from workflow.domain.actors import Actor, Role

TOKEN_PREFIX = "avrr_"  # noqa: S105 - the public marker of our tokens, not a secret
k = tb.api_tokens.c


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    prefix: str
    name: str
    actor_id: str
    office: str | None
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse(token: str) -> tuple[str, str] | None:
    if not token.startswith(TOKEN_PREFIX):
        return None
    prefix, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    return (prefix, secret) if sep and len(prefix) == 12 and secret else None


class SqlTokens:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def create(
        self, name: str, actor_id: str, office: str | None, roles: list[Role], ttl: timedelta, now: datetime
    ) -> tuple[str, TokenInfo]:
        """Returns the token (shown once, never stored) and what is stored about it."""
        prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        token = f"{TOKEN_PREFIX}{prefix}_{secret}"
        info = TokenInfo(
            str(uuid.uuid4()),
            prefix,
            name,
            actor_id,
            office,
            tuple(sorted(r.value for r in roles)),
            now,
            now + ttl,
            None,
        )
        with writing(self._db) as conn:
            conn.execute(
                insert(tb.api_tokens),
                {
                    "id": info.id,
                    "prefix": prefix,
                    "secret_hash": _digest(token),
                    "name": name,
                    "actor_id": actor_id,
                    "office": office,
                    "roles": ",".join(info.roles),
                    "created_at": now,
                    "expires_at": info.expires_at,
                },
            )
        return token, info

    def verify(self, token: str, now: datetime) -> Actor | None:
        """The token's actor, or None if it is malformed, unknown, expired or revoked."""
        parsed = _parse(token)
        if parsed is None:
            return None
        with self._db.connect() as conn:
            row = conn.execute(
                select(k.secret_hash, k.actor_id, k.office, k.roles, k.expires_at, k.revoked_at).where(
                    k.prefix == parsed[0]
                )
            ).first()
        if row is None or not hmac.compare_digest(row.secret_hash, _digest(token)):
            return None
        if row.revoked_at is not None or row.expires_at <= now:
            return None
        return Actor(row.actor_id, row.office, frozenset(Role(r) for r in row.roles.split(",") if r))

    def list(self, include_revoked: bool = False) -> list[TokenInfo]:
        query = select(
            k.id, k.prefix, k.name, k.actor_id, k.office, k.roles, k.created_at, k.expires_at, k.revoked_at
        ).order_by(k.created_at)
        if not include_revoked:
            query = query.where(k.revoked_at.is_(None))
        with self._db.connect() as conn:
            return [
                TokenInfo(
                    r.id,
                    r.prefix,
                    r.name,
                    r.actor_id,
                    r.office,
                    tuple(r.roles.split(",")),
                    r.created_at,
                    r.expires_at,
                    r.revoked_at,
                )
                for r in conn.execute(query)
            ]

    def revoke(self, id_or_prefix: str, now: datetime) -> bool:
        with writing(self._db) as conn:
            result = conn.execute(
                update(tb.api_tokens)
                .where(or_(k.id == id_or_prefix, k.prefix == id_or_prefix), k.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return bool(result.rowcount)
