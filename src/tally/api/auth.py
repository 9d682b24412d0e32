"""Bearer tokens: configured as hashes, checked in constant time, two scopes.

Configuration (`TALLY_API_TOKENS`, `--api-tokens`) holds comma-separated
`NAME:SCOPE:SHA256HEX` entries; only the SHA-256 of a token is ever stored.
Tokens are 256-bit random strings (`new_token`), so a plain SHA-256 is as good
as a slow password hash here: there is nothing to guess. `read` may call every
GET; `ingest` may only send events (POST /events); `admin` may call everything.
With no entries every endpoint except the health checks answers 401: the API
is closed by default.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tally.config import ConfigError

TOKEN_PREFIX = "tly_"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_WHERE = "TALLY_API_TOKENS / --api-tokens"


class Scope(enum.StrEnum):
    READ = "read"
    INGEST = "ingest"
    ADMIN = "admin"

    def allows(self, needed: Scope) -> bool:
        # admin includes read and ingest; read and ingest do not include each other.
        return self is Scope.ADMIN or self is needed


@dataclass(frozen=True, slots=True)
class Principal:
    """Who called: the token's name (recorded in audit rows) and its scope."""

    name: str
    scope: Scope


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    digest: bytes


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters after the prefix)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_entry(name: str, scope: str, token: str) -> str:
    """The `NAME:SCOPE:SHA256HEX` configuration entry for `token`."""
    if not _NAME.match(name):
        raise ConfigError(f"token name {name!r}: use 1-64 letters, digits, _ . @ or -")
    if scope not in Scope.__members__.values():
        raise ConfigError(f"token scope {scope!r}: expected read, ingest or admin")
    if not token or token != token.strip():
        raise ConfigError("the token must be non-empty, without surrounding spaces")
    return f"{name}:{scope}:{hash_token(token)}"


def parse_entries(text: str) -> list[tuple[Principal, str]]:
    """(principal, hex digest) of each configured entry; ConfigError names a bad one."""
    found: list[tuple[Principal, str]] = []
    names: set[str] = set()
    for number, raw in enumerate(text.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) != 3:
            raise ConfigError(
                f"{_WHERE}: entry {number} is not NAME:SCOPE:SHA256HEX "
                "(`tally api hash-token NAME SCOPE` prints one)"
            )
        name, scope, digest = parts
        if not _NAME.match(name):
            raise ConfigError(f"{_WHERE}: entry {number}: bad name {name!r}")
        if scope not in Scope.__members__.values():
            raise ConfigError(
                f"{_WHERE}: entry {number} ({name}): scope must be read, ingest or admin"
            )
        if not _HEX.match(digest.lower()):
            raise ConfigError(
                f"{_WHERE}: entry {number} ({name}): expected the 64 hex digits of a SHA-256 "
                "(configure the hash, never the token)"
            )
        if name in names:
            raise ConfigError(f"{_WHERE}: the name {name!r} appears twice")
        names.add(name)
        found.append((Principal(name, Scope(scope)), digest.lower()))
    return found


class Authenticator:
    """Finds the principal of a presented token."""

    def __init__(self, tokens: str) -> None:
        self._entries = [
            _Entry(principal, bytes.fromhex(digest)) for principal, digest in parse_entries(tokens)
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def identify(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        # Compare against every entry, without an early exit, in constant time each.
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.digest):
                found = entry.principal
        return found


class AuthError(Exception):
    """401 (no or unknown token) or 403 (the token's scope is too small)."""

    def __init__(self, status: int, message: str, needed: Scope) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.needed = needed

    def challenge(self) -> str:
        if self.status == 403:
            return f'Bearer realm="tally", error="insufficient_scope", scope="{self.needed}"'
        return 'Bearer realm="tally"'


# Declares the scheme in the OpenAPI document; the checks are ours (401 vs 403).
bearer = HTTPBearer(auto_error=False, description="A token from TALLY_API_TOKENS")


def _authorize(
    request: Request, credentials: HTTPAuthorizationCredentials | None, needed: Scope
) -> Principal:
    authenticator: Authenticator = request.app.state.authenticator
    if credentials is None:
        raise AuthError(401, "a bearer token is required (Authorization: Bearer <token>)", needed)
    principal = authenticator.identify(credentials.credentials)
    if principal is None:
        raise AuthError(401, "the bearer token is not valid", needed)
    if not principal.scope.allows(needed):
        raise AuthError(
            403, f"this token has the {principal.scope} scope; {needed} is required", needed
        )
    return principal


def _reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return _authorize(request, credentials, Scope.READ)


def _admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return _authorize(request, credentials, Scope.ADMIN)


def _ingester(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    return _authorize(request, credentials, Scope.INGEST)


Reader = Annotated[Principal, Depends(_reader)]
Ingester = Annotated[Principal, Depends(_ingester)]
Admin = Annotated[Principal, Depends(_admin)]
