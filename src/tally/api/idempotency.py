"""Running a write under an optional `Idempotency-Key` (one transaction).

- Keys are per principal: another token's key of the same text is another
  key, and never replays this one's response.
- Same key, same operation and body: the first response again, byte for byte,
  with `Idempotent-Replayed: true`. A retry sent while the first request is
  still running waits for it, then gets its response.
- Same key, different body: 422 at `["header", "Idempotency-Key"]`
  (as the IETF idempotency-key draft says).
- Only successful responses are remembered: a refused request rolls back
  with its effect, so it leaves no trace and may be retried with the same key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Header
from fastapi.responses import Response

from tally.api.body import fingerprint
from tally.api.errors import ApiError
from tally.store import api_idempotency as store
from tally.store.pool import Connection

REPLAYED = "Idempotent-Replayed"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY_DOC = (
    "Makes the request safe to retry: the same key with the same body returns the "
    "first response again; with another body it is refused (422). Kept 24 hours."
)

OptionalKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", pattern=KEY_PATTERN, description=_KEY_DOC),
]
RequiredKey = Annotated[
    str, Header(alias="Idempotency-Key", pattern=KEY_PATTERN, description=_KEY_DOC)
]

Work = Callable[[Connection], Awaitable[Response]]


def _replay(stored: store.Stored) -> Response:
    headers = {**stored.headers, REPLAYED: "true"}
    return Response(stored.body, stored.status, headers=headers, media_type="application/json")


async def run(
    pool: asyncpg.Pool,
    *,
    operation: str,
    key: str | None,
    document: Any,
    principal: str,
    work: Work,
) -> Response:
    """`work` in a transaction, remembered under `key` when one is given."""
    request_print = fingerprint(operation, document)
    async with pool.acquire() as connection, connection.transaction():
        if key is not None:
            stored = await store.claim(connection, operation, key, request_print, principal)
            if stored is not None:
                if stored.fingerprint != request_print:
                    raise ApiError.one(
                        422,
                        ["header", "Idempotency-Key"],
                        "this key was already used with a different request; use a new key",
                        "idempotency_key_reused",
                    )
                return _replay(stored)
        response = await work(connection)
        # Refusals are raised (ApiError), which rolls the key back with the work.
        assert response.status_code < 300, response.status_code
        if key is not None:
            location = response.headers.get("location")
            await store.remember(
                connection,
                principal,
                operation,
                key,
                response.status_code,
                bytes(response.body),
                {"Location": location} if location else {},
            )
    return response
