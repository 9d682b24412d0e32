"""Typed property values: exact decimals and their canonical text form.

Property values arrive as JSON scalars: str, bool, int, float (from orjson) or
Decimal (from the exact fallback parser, see `events.py`). Billing must never
see binary floating-point error, so every number is turned into a `Decimal`
from its shortest round-trip text, which equals the JSON literal whenever the
literal has at most 15 significant digits (IEEE 754 double's DBL_DIG). Events
whose literals carry more digits are re-parsed exactly before use.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

# Wide enough for any sum billing can meet; Inexact/Rounded are trapped, so an
# addition that would have to round raises instead of silently losing digits.
EXACT = Context(
    prec=200,
    Emax=999_999,
    Emin=-999_999,
    traps=[Inexact, Rounded, Overflow, InvalidOperation],
)

# Accepted magnitude of one SUM value: |v| < 10**MAX_ADJUSTED_EXPONENT+1 and at
# most MAX_FRACTION_DIGITS decimals. PostgreSQL's numeric holds far more; the
# bound keeps a single bad event from turning a rollup into a 1000-digit number.
MAX_ADJUSTED_EXPONENT = 30
MAX_FRACTION_DIGITS = 30
_INT_LIMIT = 10 ** (MAX_ADJUSTED_EXPONENT + 1)
_ZERO = Decimal(0)

_DECIMAL_STRING = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")

# A JSON literal with 16 or more significant digits may not survive a trip
# through a double, and neither may one whose value is subnormal or below the
# double range (orjson reads 1e-999 as 0.0). Such a run of digits (with an
# optional point), or a negative exponent of three digits or more, in the raw
# bytes sends the event to the exact parser. False positives only cost time.
LOSSY_NUMBER = re.compile(rb"[0-9][0-9.]{15}|[eE]-[0-9]{3}")

# Longest text form of a group value or UNIQUE member, in UTF-8 bytes. They
# sit in primary keys, and a PostgreSQL btree entry holds at most 2704 bytes
# (customer id up to 1024 bytes, metric uid 256, the rest fixed).
MAX_KEY_BYTES = 512


class TooLong(Exception):
    """A group value or UNIQUE member whose text is over MAX_KEY_BYTES."""


class SkipReason:
    """Why a matching event did not count for one metric (a Prometheus label)."""

    MISSING_VALUE = "missing_value"
    NOT_A_NUMBER = "not_a_number"
    OUT_OF_RANGE = "out_of_range"
    VALUE_TOO_LONG = "value_too_long"


def float_to_decimal(value: float) -> Decimal:
    """The exact decimal a <=15-significant-digit JSON literal stood for.

    Not `Decimal(int(value))` for large whole floats: 1e23 is the double
    99999999999999991611392, but the literal said 10**23 and repr says so."""
    if value.is_integer() and -(2**53) <= value <= 2**53:
        return Decimal(int(value))
    return Decimal(repr(value))


def number_to_decimal(value: int | float | Decimal) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    if type(value) is float:
        return float_to_decimal(value)
    assert isinstance(value, Decimal)
    return value


def decimal_text(value: Decimal) -> str:
    """Canonical decimal text: no exponent, no trailing zeros, `-0` is `0`.

    No context arithmetic: `normalize` would round a literal longer than the
    context's precision (or trap, under EXACT). Callers bound the exponent
    first (`key_number_text`, the SUM range), since `1e999999` would be a
    million digits long."""
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
    if type(value) is float and value.is_integer() and -(2**53) <= value <= 2**53:
        return str(int(value))
    return decimal_text(number_to_decimal(value))


def key_text(text: str) -> str:
    """`text` as a group value or UNIQUE member; raises TooLong if it cannot be one."""
    if len(text) > MAX_KEY_BYTES // 4 and len(text.encode()) > MAX_KEY_BYTES:
        raise TooLong
    return text


def key_number_text(value: int | float | Decimal) -> str:
    """`number_text` for a group value or UNIQUE member; raises TooLong."""
    # Checked first: the text of 1e9999999 would be ten million digits long.
    if type(value) is Decimal and value and abs(value.adjusted()) > MAX_KEY_BYTES:
        raise TooLong
    text = number_text(value)
    if len(text) > MAX_KEY_BYTES:
        raise TooLong
    return text


def _bounded(value: Decimal) -> Decimal | str:
    """`value` as a SUM amount within the bounds, or SkipReason.OUT_OF_RANGE.

    Trailing zeros do not count as decimals (`1.000` is 1), and every zero is
    the plain 0: adding `0e-300` as is would make the sum carry 300 decimals."""
    if not value.is_finite():
        return SkipReason.OUT_OF_RANGE
    if not value:
        return _ZERO
    if value.adjusted() > MAX_ADJUSTED_EXPONENT:
        return SkipReason.OUT_OF_RANGE
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    if exponent >= -MAX_FRACTION_DIGITS:
        return value
    kept = len(digits)
    while digits[kept - 1] == 0:  # not all zero: value is not 0
        kept -= 1
    exponent += len(digits) - kept
    if exponent < -MAX_FRACTION_DIGITS:
        return SkipReason.OUT_OF_RANGE
    return Decimal((sign, digits[:kept], exponent))


def parse_decimal_string(text: str) -> Decimal | str:
    """A decimal from a string like `"12.50"`, or a SkipReason.

    NaN, Infinity, hex, blanks and anything else that is not a plain decimal
    literal is refused: a metering value must be a number a person can read.
    """
    if len(text) > 100 or _DECIMAL_STRING.fullmatch(text) is None:
        return SkipReason.NOT_A_NUMBER
    return _bounded(Decimal(text))


def sum_operand(value: object) -> int | Decimal | str:
    """The amount one event adds to a SUM: an int, a Decimal, or a SkipReason.

    Integers stay Python ints (the common case, and much cheaper to add).
    """
    kind = type(value)
    if kind is int:
        if -_INT_LIMIT < value < _INT_LIMIT:
            return value  # type: ignore[return-value]
        return SkipReason.OUT_OF_RANGE
    if kind is float or kind is Decimal:
        return _bounded(number_to_decimal(value))  # type: ignore[arg-type]
    if kind is str:
        return parse_decimal_string(value)  # type: ignore[arg-type]
    if value is None:
        return SkipReason.MISSING_VALUE
    return SkipReason.NOT_A_NUMBER  # booleans


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
