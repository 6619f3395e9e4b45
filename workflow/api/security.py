"""Who is calling: an API token, or (when configured) an OIDC/JWT bearer token; rate limited."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt
import structlog
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from config.settings import Settings
from workflow.adapters.tokens import TOKEN_PREFIX, SqlTokens
from workflow.api.problems import ApiProblem
from workflow.domain.actors import Actor, Role
from workflow.service_layer.ports import Clock

log = structlog.get_logger(__name__)
OFFICE_WIDTH = 32  # offices.code


def _storable(value: str, width: int) -> bool:
    """Fits its column and holds no control character or lone surrogate (which no database
    takes in text): a claim that is not so names no actor or office this engine knows."""
    return 0 < len(value) <= width and value.isprintable()


def unauthenticated(detail: str) -> ApiProblem:
    return ApiProblem("unauthenticated", detail, {"WWW-Authenticate": 'Bearer realm="avrr"'})


@dataclass
class Authenticator:
    settings: Settings
    tokens: SqlTokens
    clock: Clock

    @cached_property
    def _shared(self) -> MovingWindowRateLimiter:
        url = self.settings.broker_url if (self.settings.broker_url or "").startswith("redis") else None
        if not url:
            return self._local
        # Short socket timeouts: a Redis that does not answer must not hold a request up.
        return MovingWindowRateLimiter(storage_from_string(url, socket_connect_timeout=1, socket_timeout=1))

    @cached_property
    def _local(self) -> MovingWindowRateLimiter:
        return MovingWindowRateLimiter(storage_from_string("memory://"))

    def _limiter_call(self, method: str, *args: Any) -> Any:
        """The shared (Redis) counters; while Redis is away, this process's own, so the API keeps
        serving (transitions commit without Redis) with limits per process until it returns."""
        try:
            return getattr(self._shared, method)(*args)
        except Exception as exc:  # the storage's connection errors differ by client library
            log.warning("rate_limit.storage_unavailable", error=type(exc).__name__)
            return getattr(self._local, method)(*args)

    @cached_property
    def _jwks(self) -> jwt.PyJWKClient | None:
        return jwt.PyJWKClient(self.settings.oidc_jwks_url) if self.settings.oidc_jwks_url else None

    def limit(self, rule: str, *key: str) -> None:
        """Counts one hit; refuses with 429 once the rule's budget for ``key`` is spent."""
        item = parse(rule)
        if not self._limiter_call("hit", item, *key):
            stats = self._limiter_call("get_window_stats", item, *key)
            retry = max(1, int(stats.reset_time - self.clock.now().timestamp()))
            raise ApiProblem("rate_limited", f"limit {rule} reached", {"Retry-After": str(retry)})

    def authenticate(self, authorization: str | None, client: str) -> Actor:
        """A valid credential always passes: only failures count against the address's budget,
        and once it is spent failures answer 429 (a caller locked out of its own token by
        someone else's guesses from a shared address would be a denial of service)."""
        scheme, _, credential = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise unauthenticated("send Authorization: Bearer <token>")  # no guess: not counted
        actor = self._verify(credential.strip())
        if actor is not None:
            return actor
        failures = parse(self.settings.rate_limit_auth_failures)
        if self._limiter_call("test", failures, "auth", client) is False:
            raise ApiProblem(
                "rate_limited", "too many failed authentications from this address", {"Retry-After": "60"}
            )
        self._limiter_call("hit", failures, "auth", client)
        raise unauthenticated("the token is unknown, expired or revoked")

    def _verify(self, credential: str) -> Actor | None:
        if credential.startswith(TOKEN_PREFIX):
            return self.tokens.verify(credential, self.clock.now())
        if self.settings.oidc_issuer:
            return self._verify_jwt(credential)
        return None

    def _verify_jwt(self, credential: str) -> Actor | None:
        s = self.settings
        try:
            key: Any = (
                self._jwks.get_signing_key_from_jwt(credential).key if self._jwks else s.oidc_public_key
            )
            if not key:
                return None
            claims = jwt.decode(
                credential,
                key,
                algorithms=s.oidc_algorithms,
                audience=s.oidc_audience,
                issuer=s.oidc_issuer,
                # Expiry and not-before are checked against the engine's clock below.
                options={
                    "require": ["exp", "iss", "sub"] + (["aud"] if s.oidc_audience else []),
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
            now = self.clock.now().timestamp()
            if not float(claims["exp"]) > now or float(claims.get("nbf", now)) > now + 30:
                return None
            subject, office = str(claims["sub"])[:120], claims.get(s.oidc_office_claim)
            roles = claims.get(s.oidc_roles_claim) or []
            if office is not None and not (isinstance(office, str) and _storable(office, OFFICE_WIDTH)):
                # Not an office code this engine could store: refused, not carried into a write
                # that would fail on the column's width (a 500 after the request was accepted).
                return None
            if not _storable(subject, 120) or not isinstance(roles, list):
                return None
            return Actor(
                subject,
                office,
                frozenset(Role(r) for r in roles if isinstance(r, str) and r in Role.__members__.values()),
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
