"""Structured logs: one line per event of note, key=value text or JSON,
secrets redacted (passwords in URLs, anything named like a secret)."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import orjson

from tally.config import redact_url

_SECRET_KEYS = re.compile(r"pass|secret|token|key", re.I)


def redact(value: object) -> object:
    if isinstance(value, str):
        return redact_url(value)
    return value


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            fields[key] = "***" if _SECRET_KEYS.search(key) else redact(value)
        if record.exc_info and record.exc_info[0] is not None:
            fields["error"] = redact(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")
        if self.as_json:
            return orjson.dumps(fields, default=str).decode()
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())


def _text(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _OncePer(logging.Filter):
    """Lets a given aiokafka message template through once per `seconds`.

    aiokafka logs every reconnect attempt (several a second while a broker is
    down); an operator needs to see that it is happening, not each attempt.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.seconds) < self.seconds:
            return False
        if len(self.last) > 1000:
            self.last.clear()
        self.last[key] = now
        return True


def setup(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(as_json))
    handler.addFilter(_OncePer(30.0))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


class Log:
    """`log.info("flushed", rows=12, partitions=3)`: an event name and fields."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _emit(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, exc_info=exc, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, False, fields)

    def warning(self, event: str, exc: bool = False, **fields: Any) -> None:
        self._emit(logging.WARNING, event, exc, fields)

    def error(self, event: str, exc: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, exc, fields)
