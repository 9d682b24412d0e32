"""Configuration: one pydantic model, the same names for flags and environment.

Every setting `foo_bar` is the flag `--foo-bar` and the variable
`TALLY_FOO_BAR`; a flag wins over the environment, which wins over the
default. A bad value stops the process at start with a message naming the
flag, the variable and what was wrong (`ConfigError`).
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """Seconds from `2.5`, `"500ms"`, `"30s"`, `"5m"`, `"24h"` or `"35d"`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m, 24h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration (examples: 2.5, 500ms, 30s, 5m, 24h, 35d)")


def format_duration(seconds: float) -> str:
    """`36d`, `90m`, `1.5s`: the largest unit that divides the value."""
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNIT_SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:g}s"


Seconds = Annotated[float, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]


# How much longer than the lateness window UNIQUE members must be kept, at
# least: the clock skew between workers and whoever runs retention, and the
# time an accepted event may wait in memory before its flush commits.
MEMBER_RETENTION_MARGIN = 86400.0
# By default members are kept this long past the lateness window, for
# queries that union periods (rolling 30- and 90-day UNIQUE, calendar
# quarters). A calendar quarter is up to 92 local days (Q3, Q4); the day of
# slack the span check adds covers a DST hour on top.
ROLLING_WINDOW = 92 * 86400.0


# Settings renamed so that "metrics" means usage metrics only and Prometheus is
# "telemetry" (issue 17): the old flag and variable still work, with a warning
# that names the new one; old and new given with different values is refused.
RENAMED = {
    "metrics_poll_interval": "definitions_poll_interval",
    "metrics_host": "telemetry_host",
    "metrics_port": "telemetry_port",
}
_OLD_NAMES = {new: old for old, new in RENAMED.items()}


def without_renamed(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the deprecated variables of renamed settings: for a
    child process given the new names, which an inherited old name with
    another value would make refuse to start."""
    old = {env_name(name) for name in RENAMED}
    return {k: v for k, v in environ.items() if k not in old}


class SettingDeprecationWarning(DeprecationWarning):
    """An old setting name was used; the message names the new one."""


def env_name(field: str) -> str:
    return "TALLY_" + field.upper()


def flag_name(field: str) -> str:
    """`--foo-bar`; `--no-foo-bar` for a setting that is on by default."""
    info = Settings.model_fields.get(field)
    negative = info is not None and info.annotation is bool and info.default is True
    return ("--no-" if negative else "--") + field.replace("_", "-")


class Settings(BaseModel):
    """Everything a Tally process reads from its flags and environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kafka_bootstrap: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    database_url: str = Field("postgresql://localhost:5432/tally", description="PostgreSQL DSN")
    topic: tuple[str, ...] = Field(
        ("usage-events",), description="topic(s) to consume, comma-separated"
    )
    group: str = Field("tally", description="Kafka consumer group of the worker fleet")
    dlq_topic: str = Field("", description="dead-letter topic; empty means <first topic>.dlq")
    create_topics: bool = Field(
        False, description="create missing topics (and the DLQ topic) at start"
    )
    topic_partitions: int = Field(
        4, ge=1, description="partitions for topics created with --create-topics"
    )
    flush_interval: Positive = Field(5.0, description="seconds between flushes (also 500ms, 5s...)")
    max_batch: int = Field(5000, ge=1, description="records per Kafka fetch")
    max_pending_events: int = Field(
        1_000_000, ge=1, description="flush when this many events are pending"
    )
    max_pending_rollups: int = Field(
        500_000, ge=1, description="flush when this many rollups (and UNIQUE members) are pending"
    )
    dedup_window: Seconds = Field(
        86400.0, description="how long event ids are remembered; 0 turns dedup off"
    )
    max_lateness: Seconds = Field(
        35 * 86400.0, description="oldest accepted event time, before now"
    )
    max_future_skew: Seconds = Field(300.0, description="furthest accepted event time, after now")
    member_cache: int = Field(
        1_000_000,
        ge=0,
        description="UNIQUE members a worker remembers as stored, so its flushes do not send "
        "them again (about 130 bytes each); 0 turns the cache off",
    )
    member_retention: Seconds = Field(
        127 * 86400.0,  # when not given: max_lateness + unique_window (`_default_member_retention`)
        description="UNIQUE members of a period are deleted once the period ended this long ago"
        " (values stay); default max_lateness + unique_window (127d); at least max_lateness + 1d; 0 keeps them"
        " forever",
    )
    unique_window: Seconds = Field(
        ROLLING_WINDOW,
        description="the longest span whose UNIQUE members the API unions (usage windows,"
        " summaries; longer ones are refused); the default member_retention keeps members"
        " this long past max_lateness",
    )
    usage_max_rows: int = Field(
        200_000,
        ge=1,
        description="the most stored rollup rows one usage query or summary reads (each held"
        " in memory); past it the query is refused (422) naming what to narrow",
    )
    retention_interval: Seconds = Field(
        600.0, description="time between retention passes of a worker; 0 runs none"
    )
    retention_batch_size: int = Field(
        10_000, ge=1, description="rows deleted per retention transaction, at most"
    )
    retention_pause: Seconds = Field(
        0.5, description="pause between two retention batches (gentler on flushes when longer)"
    )
    max_event_bytes: int = Field(64 * 1024, ge=64, description="largest accepted message value")
    session_timeout: Positive = Field(10.0, description="Kafka consumer session timeout")
    revoke_policy: Literal["flush", "drop"] = Field(
        "flush",
        description="on partition revocation: flush all pending work, or drop it and reload the partitions kept"
        " (the dropped events are read again)",
    )
    definitions_poll_interval: Positive = Field(
        2.0, description="how often usage-metric definitions are re-read from PostgreSQL"
    )
    telemetry_host: str = Field(
        "0.0.0.0", description="address of the /metrics, /healthz, /readyz server"
    )
    telemetry_port: int = Field(
        9464, ge=0, le=65535, description="port of that server; 0 picks a free one"
    )
    ready_flush_age: Positive = Field(
        60.0, description="/readyz fails when the last flush is older than this"
    )
    retry_max_backoff: Positive = Field(
        30.0, description="cap of the retry backoff for database and Kafka errors"
    )
    shutdown_timeout: Positive = Field(
        30.0, description="how long the final flush may keep retrying at exit"
    )
    database_timeout: Positive = Field(
        30.0,
        description="longest one PostgreSQL statement may run (statement_timeout, and the "
        "client's own wait)",
    )
    lock_timeout: Positive = Field(
        10.0, description="longest a statement waits for a row or table lock (lock_timeout)"
    )
    flush_timeout: Positive = Field(
        60.0,
        description="longest one flush attempt (dead letters and the transaction) may take; "
        "then it is retried",
    )
    load_timeout: Positive = Field(
        60.0, description="longest loading a partition's stored offset and dedup window may take"
    )
    stall_timeout: Positive = Field(
        180.0,
        description="/healthz fails when the consume loop or one flush attempt has made no "
        "progress for this long",
    )
    permanent_attempts: int = Field(
        3,
        ge=1,
        description="attempts before an error that retrying cannot mend stops the worker",
    )
    stop_linger: Seconds = Field(
        30.0,
        description="after a permanent error, how long /metrics and /readyz stay up before "
        "the process exits (so Prometheus sees why)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as key=value text or JSON"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO")
    worker_id: str = Field("", description="name in logs and tally status; default host:pid")
    api_host: str = Field(
        "0.0.0.0", description="address of the HTTP API (tally api, run --with-api)"
    )
    api_port: int = Field(
        8080, ge=0, le=65535, description="port of the HTTP API; 0 picks a free one"
    )
    api_tokens: str = Field(
        "",
        description="API bearer tokens, comma-separated NAME:SCOPE:SHA256HEX (scope read, ingest or admin); "
        "only hashes are configured: `tally api hash-token` makes one",
    )
    backfill_flush_records: int = Field(
        200_000,
        ge=1,
        description="a backfill flushes at least every this many records read (also every"
        " flush_interval); tally backfill --flush-records",
    )
    backfill_database_url: str = Field(
        "",
        description="PostgreSQL DSN of the backfills the API starts (POST /backfills), with the"
        " worker's grants; empty: database_url",
    )
    with_api: bool = Field(False, description="also serve the HTTP API from this worker process")
    migrate: bool = Field(
        True,
        description="apply migrations at start; when off, only check that the schema is current "
        "(for a role without DDL rights)",
    )

    @field_validator("topic", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        if isinstance(value, list | tuple) and not value:
            raise ValueError("at least one topic is needed")
        return value

    @field_validator(
        "flush_interval",
        "dedup_window",
        "max_lateness",
        "max_future_skew",
        "member_retention",
        "unique_window",
        "retention_interval",
        "retention_pause",
        "session_timeout",
        "definitions_poll_interval",
        "ready_flush_age",
        "retry_max_backoff",
        "shutdown_timeout",
        "database_timeout",
        "lock_timeout",
        "flush_timeout",
        "load_timeout",
        "stall_timeout",
        "stop_linger",
        mode="before",
    )
    @classmethod
    def _durations(cls, value: object) -> float:
        return parse_duration(value)

    @field_validator("stall_timeout")
    @classmethod
    def _stall_after_attempts(cls, value: float, info: ValidationInfo) -> float:
        # Liveness must not fail a flush or a load that is still within its own timeout.
        longest = max(info.data.get("flush_timeout", 0.0), info.data.get("load_timeout", 0.0))
        if value <= longest:
            raise ValueError(
                f"must be longer than flush_timeout and load_timeout ({longest:g} s), "
                "or liveness would fail attempts still within their own timeout"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_member_retention(cls, data: Any) -> Any:
        """Not given: the lateness window plus the longest UNIQUE window the API
        serves (unique_window, 92 days), so a longer max_lateness or window moves
        it along (35d + 92d = 127d by default)."""
        if isinstance(data, dict) and data.get("member_retention") is None:
            try:
                lateness = parse_duration(data.get("max_lateness", 35 * 86400.0))
                window = parse_duration(data.get("unique_window", ROLLING_WINDOW))
            except ValueError:
                return data  # their own validators say what is wrong
            data = {**data, "member_retention": lateness + window}
        return data

    @field_validator("member_retention")
    @classmethod
    def _member_retention(cls, value: float, info: ValidationInfo) -> float:
        # A late event for a period whose members were deleted would insert its
        # member again and count it twice: never delete a period that can still
        # receive events (docs/operations.md, "Retention").
        lateness = info.data.get("max_lateness")
        if value and lateness is not None and value < lateness + MEMBER_RETENTION_MARGIN:
            raise ValueError(
                f"is {format_duration(value)}; it must be 0 (keep members forever) or at least"
                f" max_lateness ({format_duration(lateness)}) + 1d"
                f" = {format_duration(lateness + MEMBER_RETENTION_MARGIN)}: members of a period"
                " that can still receive late events would be counted again"
            )
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("database_url", "backfill_database_url")
    @classmethod
    def _dsn(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name == "backfill_database_url" and value == "":
            return value
        if not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (a libpq URI)")
        return value

    @property
    def dead_letter_topic(self) -> str:
        return self.dlq_topic or f"{self.topic[0]}.dlq"

    def redacted_database_url(self) -> str:
        return redact_url(self.database_url)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@/\s]*@")


def redact_url(text: str) -> str:
    """`text` with the password of any URL in it replaced, for logs and error messages."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


class ConfigError(Exception):
    """A setting was refused; the message says which and why."""


def _field_info(name: str) -> FieldInfo:
    return Settings.model_fields[name]


def add_arguments(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """Flags for `fields`, defaulting to None so the environment can fill in."""
    for name in fields:
        info = _field_info(name)
        help_text = f"{info.description or name} [env {env_name(name)}; default {info.default!r}]"
        if info.annotation is bool and info.default is True:
            help_text = "turns off: " + help_text
        if info.annotation is bool:
            # A flag turns the default over: --foo for off-by-default, --no-foo for on.
            parser.add_argument(
                flag_name(name),
                dest=name,
                action="store_const",
                const=not info.default,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag_name(name), dest=name, default=None, metavar=name.upper(), help=help_text
            )
        old = _OLD_NAMES.get(name)
        if old is not None:
            parser.add_argument(
                "--" + old.replace("_", "-"),
                dest=old,
                default=None,
                metavar=name.upper(),
                help=f"deprecated: use {flag_name(name)}",
            )


def _old_name_value(
    name: str, given: Mapping[str, Any], environ: Mapping[str, str], names: Sequence[str]
) -> tuple[Any, str] | None:
    """The value given under `name`'s old name (flag first, then variable), warned of."""
    old = _OLD_NAMES.get(name)
    if old is None:
        return None
    if given.get(old) is not None and name in names:
        value, where, new_where = given[old], "--" + old.replace("_", "-"), flag_name(name)
    elif env_name(old) in environ:
        value, where, new_where = environ[env_name(old)], env_name(old), env_name(name)
    else:
        return None
    warnings.warn(
        f"{where} is deprecated; use {new_where}", SettingDeprecationWarning, stacklevel=3
    )
    return value, where


def load_settings(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    fields: Sequence[str] | None = None,
) -> Settings:
    """Settings from flags over environment over defaults; ConfigError if refused."""
    environ = os.environ if environ is None else environ
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    names = list(fields) if fields is not None else list(Settings.model_fields)
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    for name in Settings.model_fields:
        value = given.get(name)
        if value is not None and name in names:
            raw[name], source[name] = value, flag_name(name)
        elif env_name(name) in environ:
            value = environ[env_name(name)]
            if _field_info(name).annotation is bool:
                value = value.strip().lower() in ("1", "true", "yes", "on")
            raw[name], source[name] = value, env_name(name)
        old = _old_name_value(name, given, environ, names)
        if old is not None:
            if name in raw and str(raw[name]).strip() != str(old[0]).strip():
                raise ConfigError(
                    f"invalid configuration:\n  {source[name]} and {old[1]} are the same setting"
                    f" (the second is its deprecated name) with different values"
                    f" ({raw[name]!r} and {old[0]!r}); give only {source[name]}"
                )
            raw.setdefault(name, old[0])
            source.setdefault(name, old[1])
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = str(error["loc"][0]) if error["loc"] else "?"
            where = source.get(name, f"{flag_name(name)} / {env_name(name)}")
            shown = error.get("input")
            if name in ("database_url", "backfill_database_url") and isinstance(shown, str):
                shown = redact_url(shown)
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{where}: {message} (got {shown!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
