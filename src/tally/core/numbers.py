"""Numbers at the edges: canonical decimal text for what the API and the
contracts show and compare, and the NUL check PostgreSQL needs.

The per-event arithmetic (exact SUM amounts, canonical keys, their bounds) is
the native core's (native/src/number.rs); these helpers serve definitions,
API answers and values read back from PostgreSQL, with the same rules.
"""

from __future__ import annotations

from decimal import Decimal

# Longest text form of a group value or UNIQUE member, in UTF-8 bytes. They
# sit in primary keys, and a PostgreSQL btree entry holds at most 2704 bytes
# (customer id up to 1024 bytes, metric uid 256, the rest fixed).
MAX_KEY_BYTES = 512


def decimal_text(value: Decimal) -> str:
    """Canonical decimal text: no exponent, no trailing zeros, `-0` is `0`.

    No context arithmetic: `normalize` would round a long literal. Callers
    bound the exponent first (`1e999999` would be a million digits long)."""
    if not value:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def number_text(value: int | float | Decimal) -> str:
    """Canonical text of a JSON number: `1.0` and `1` are both `"1"`."""
    if type(value) is int:
        return str(value)
    if type(value) is float:
        if value.is_integer() and -(2**53) <= value <= 2**53:
            return str(int(value))
        return decimal_text(Decimal(repr(value)))
    assert isinstance(value, Decimal)
    return decimal_text(value)


def contains_nul(value: object) -> bool:
    """Whether a JSON-like value holds the NUL character anywhere (PostgreSQL
    text and jsonb cannot store it). Iterative: a document may be deep."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False
