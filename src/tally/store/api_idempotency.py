"""Idempotency keys of the HTTP API, in `tally.api_idempotency`.

Keys are per principal (the token's name): the same key sent by another
principal is another key, so it can never replay a response made for
somebody else. Race-free by the primary key (principal, operation, key):
`claim` inserts the key inside the caller's transaction. A concurrent request with the same key blocks on that insert
until the first transaction ends; if it committed, the second finds the
stored response, and if it rolled back, the second owns the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from tally.store.pool import Connection

RETENTION = "24 hours"
_PURGE_BATCH = 100


@dataclass(frozen=True, slots=True)
class Stored:
    fingerprint: bytes
    status: int
    body: bytes
    headers: dict[str, str]


async def claim(
    connection: Connection, operation: str, key: str, fingerprint: bytes, principal: str
) -> Stored | None:
    """Own `key` for this transaction (None), or the response stored under it.

    Must run inside a transaction, which must then call `remember` or roll back.
    """
    # Expired keys: a few per call, skipping rows another purge holds, so purges
    # never wait on each other.
    await connection.execute(
        "DELETE FROM tally.api_idempotency WHERE (principal, operation, key) IN ("
        " SELECT principal, operation, key FROM tally.api_idempotency"
        f" WHERE created_at < now() - interval '{RETENTION}'"
        f" ORDER BY created_at LIMIT {_PURGE_BATCH} FOR UPDATE SKIP LOCKED)"
    )
    # Twice at most: a stored row can vanish between the two statements only if
    # a purge removed it as expired, and then the key is free again.
    for _ in range(2):
        inserted = await connection.fetchval(
            "INSERT INTO tally.api_idempotency (operation, key, fingerprint, principal)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (principal, operation, key) DO NOTHING"
            " RETURNING true",
            operation,
            key,
            fingerprint,
            principal,
        )
        if inserted:
            return None
        # The insert waited for the transaction that wrote the row, which committed.
        row = await connection.fetchrow(
            "SELECT fingerprint, status, body, headers FROM tally.api_idempotency"
            " WHERE principal = $1 AND operation = $2 AND key = $3",
            principal,
            operation,
            key,
        )
        if row is not None:
            return Stored(
                bytes(row["fingerprint"]), row["status"], bytes(row["body"]), dict(row["headers"])
            )
    raise RuntimeError(f"idempotency key {key!r} of {operation} neither free nor stored")


async def remember(
    connection: Connection,
    principal: str,
    operation: str,
    key: str,
    status: int,
    body: bytes,
    headers: dict[str, str],
) -> None:
    await connection.execute(
        "UPDATE tally.api_idempotency SET status = $4, body = $5, headers = $6"
        " WHERE principal = $1 AND operation = $2 AND key = $3",
        principal,
        operation,
        key,
        status,
        body,
        headers,
    )
