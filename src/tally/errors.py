"""Tally's own exceptions, and which errors of the parts around it are worth retrying.

Every exception Tally raises on purpose is a `TallyError`. Like aiokafka's
errors, each class says whether retrying can help (`retriable`): a worker
retries transient errors with backoff for as long as they last, and stops
loudly on a permanent one after a bounded number of attempts
(`tally.worker.retry`), so a deterministic failure is never retried forever
and never follows its partition from worker to worker in silence.

`is_transient` classifies errors of PostgreSQL (asyncpg) and Kafka (aiokafka):

- transient: lost or refused connections, timeouts, serialization failures,
  deadlocks, lock and statement timeouts, administrator shutdowns, a primary
  that became read-only in a failover, exhausted resources, statements cached
  before a migration, and every aiokafka error marked `retriable`;
- permanent: everything else, e.g. a constraint violation, an undefined
  column after a bad migration, a permission error, a message too large.
"""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError


class TallyError(Exception):
    """Base of the exceptions Tally raises on purpose."""

    retriable = False


class PermanentError(TallyError):
    """Retrying cannot mend this: the worker stops with this one-line reason
    (readiness false, `tally_permanent_errors_total`, exit status 3)."""

    def __init__(self, reason: str, *, component: str, kind: str) -> None:
        super().__init__(reason)
        self.component = component
        self.kind = kind


class UnreadableBatch(PermanentError):
    """Kafka gave us a record batch this process cannot decode (a compression
    codec whose library is missing, or a corrupt batch)."""


# SQLSTATE classes (and codes) that a retry can outlive: the connection,
# rollbacks (serialization failure, deadlock), resources, operator intervention
# (shutdown, cancel, statement timeout), system errors, a lock timeout, an idle
# transaction timeout, a primary turned read-only by a failover.
class CorruptBatch(TallyError):
    """A record batch failed its CRC check; re-fetching may help a few times."""


_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_CODES = ("55P03", "25P03", "25006")
_PERMANENT_CODES = ("57P04",)  # database_dropped


def is_transient(exc: BaseException) -> bool:
    """Whether retrying `exc` (after a pause) can succeed."""
    if isinstance(exc, TallyError):
        return exc.retriable
    if isinstance(exc, KafkaError):
        return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError | KafkaConnectionError)
    if isinstance(exc, asyncpg.InvalidCachedStatementError):
        return True  # statements prepared before a migration; asyncpg re-prepares
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state in _PERMANENT_CODES:
            return False
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES
    # Refused, reset or unreachable (TimeoutError is an OSError), a connection
    # closed under us, or a schema cache outdated by a migration.
    return isinstance(
        exc, OSError | asyncpg.InterfaceError | asyncpg.exceptions.OutdatedSchemaCacheError
    )


def component_of(exc: BaseException) -> str:
    """The `component` label of an error: kafka, database or tally."""
    if isinstance(exc, PermanentError):
        return exc.component
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, TallyError):
        return "tally"
    return "database"
