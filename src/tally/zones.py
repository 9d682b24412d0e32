"""Time zone data pinned to the `tzdata` package, never the host's.

Every worker of a fleet must cut the same periods. CPython's zoneinfo looks a
key up in each directory of `zoneinfo.TZPATH` (by default the OS database,
/usr/share/zoneinfo and friends, or $PYTHONTZPATH) and only when none has it
in the `tzdata` package; `available_timezones()` is the union of both. Two
hosts with different OS tz data would then disagree on a zone's rules, or on
whether it exists at all. With an empty TZPATH every lookup and the list of
names come from `tzdata`, whose version the package pins and `/metrics` shows.

`pin()` runs when `tally` is imported (tally/__init__.py), before any
ZoneInfo is built by tally; it also clears zoneinfo's cache, in case one was
built from the OS data before. It changes zoneinfo for the whole process.
"""

from __future__ import annotations

import importlib
import zoneinfo
from types import ModuleType


def _tzdata() -> ModuleType:
    try:
        return importlib.import_module("tzdata")  # untyped: no stubs
    except ImportError as exc:  # pragma: no cover - a dependency of tally
        raise ImportError("tally needs the tzdata package for its time zone data") from exc


def pin() -> None:
    """Make zoneinfo read only the `tzdata` package (idempotent)."""
    _tzdata()  # present, or no zone at all would load
    if zoneinfo.TZPATH != ():
        zoneinfo.reset_tzpath(to=())
        zoneinfo.ZoneInfo.clear_cache()


def zone_data_version() -> str:
    """The IANA release of the zone data in use, e.g. ``"2025b"``."""
    return str(_tzdata().IANA_VERSION)
