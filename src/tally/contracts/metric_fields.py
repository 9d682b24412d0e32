"""The fields of a usage metric definition (tally.contracts.metric): the
enums, the constants of the rules, the exact number and name types, the lists
of mutable and immutable fields, and the uid derived from a name."""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import unicodedata
import zoneinfo
from decimal import Decimal
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator, StrictStr
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from tally.core.numbers import decimal_text
from tally.core.periods import TimeUnit

UID_PATTERN = r"^[a-z][a-z0-9_]{0,127}$"
_EARLIEST = -62135596800.0  # 0001-01-01T00:00:00Z
_LATEST = 253402300799.0  # 9999-12-31T23:59:59Z
MAX_FILTER_VALUES = 1000
MAX_GROUPING_PROPERTIES = 5
# Validation context key: a zone name accepted without this host's zone data
# (the one already stored for the metric).
STORED_ZONE = "stored_timezone"
# Validation context key: fields refused for their own shape, whose rules are
# not judged (tally.contracts.metric.parse_metric's second pass).
SKIPPED_FIELDS = "skipped_fields"


class AggregationType(enum.StrEnum):
    COUNT = "COUNT"
    UNIQUE = "UNIQUE"
    SUM = "SUM"
    MAX = "MAX"
    MIN = "MIN"
    LATEST = "LATEST"
    AVG = "AVG"


class ValueType(enum.StrEnum):
    """What a rollup's value is (Cuoral's data_type): STRING only with LATEST."""

    NUMBER = "NUMBER"
    STRING = "STRING"


class MetricType(enum.StrEnum):
    SIMPLE = "SIMPLE"
    GROUPED = "GROUPED"


class TargetOperator(enum.StrEnum):
    GREATER_THAN = "greater_than"
    LESS_THAN = "less_than"
    EQUAL_TO = "equal_to"


class TargetDirection(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class MetricSource(enum.StrEnum):
    """EVENTS: workers aggregate events; EXTERNAL: values are computed elsewhere
    and created through the API (Exante's metric values); workers never run it."""

    EVENTS = "EVENTS"
    EXTERNAL = "EXTERNAL"


class ContextType(enum.StrEnum):
    """Exante's context_type: the kind of entity the customer key names."""

    ORGANIZATION = "ORGANIZATION"
    PARTY = "PARTY"
    USER = "USER"


class ValueKind(enum.StrEnum):
    """Exante's value_type (Tally's `valueType` is Cuoral's NUMBER or STRING)."""

    CURRENCY = "currency"
    PERCENTAGE = "percentage"
    DAYS = "days"
    COUNT = "count"
    RATIO = "ratio"


class StorageUnit(enum.StrEnum):
    """raw: values as they are; cents: currency in integer minor units."""

    RAW = "raw"
    CENTS = "cents"


class PeriodDefinition(enum.StrEnum):
    """Exante's period_definition: how a value's metricDate is to be read."""

    AS_OF_DATE = "as_of_date"
    TRAILING_30_DAYS = "trailing_30_days"
    CALENDAR_MONTH = "calendar_month"
    MONTH_TO_DATE = "month_to_date"


class PeriodType(enum.StrEnum):
    ROLLING = "rolling"
    CALENDAR = "calendar"


class PeriodValue(enum.StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    QUARTER = "quarter"
    YEAR = "year"
    DAYS_7 = "7-day"
    DAYS_30 = "30-day"
    DAYS_90 = "90-day"


# Aggregations an EXTERNAL metric may have: how its stored values combine
# across periods. COUNT, UNIQUE and AVG need events.
EXTERNAL_AGGREGATIONS = frozenset(
    {AggregationType.SUM, AggregationType.MAX, AggregationType.MIN, AggregationType.LATEST}
)
# The one time unit an EXTERNAL metric's values are posted in (Exante's
# time_unit). Exactly one: the usage query covers a window with the largest
# stored unit that fits, which is only right when every unit holds the same
# values (docs/decisions.md, "External values: one time unit").
EXTERNAL_UNITS = frozenset({TimeUnit.DAY, TimeUnit.MONTH, TimeUnit.YEAR})
# Values that overlap or are not additive: summing them across periods is
# wrong (a month-to-date value already holds the days before it).
OVERLAPPING_PERIODS = frozenset(
    {
        PeriodDefinition.TRAILING_30_DAYS,
        PeriodDefinition.MONTH_TO_DATE,
        PeriodDefinition.CALENDAR_MONTH,
    }
)
NON_ADDITIVE_KINDS = frozenset({ValueKind.PERCENTAGE, ValueKind.RATIO, ValueKind.DAYS})
# Exante's definition fields: only an EXTERNAL metric's values respect them.
EXTERNAL_ONLY_FIELDS = ("context_type", "value_kind", "storage_unit", "period_definition")


# The exponent a FiniteDecimal may be written with: far more than its 20
# places need (`1.000` is 1 with exponent -3, still taken), well inside what
# PostgreSQL's numeric holds (a scale of at most 16383).
MAX_EXPONENT = 1000


def _storable_exponent(value: Decimal) -> Decimal:
    # pydantic's digit check normalizes first, and far below the context's range
    # (`1e-2000000`, `0E-2000000`) the normal form underflows to a zero that
    # passes; asyncpg then cannot encode the number ("exponent is too small").
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and not -MAX_EXPONENT <= exponent <= MAX_EXPONENT:
        raise PydanticCustomError(
            "decimal_exponent",
            "the exponent must lie between -{limit} and {limit}"
            " (Tally stores at most 40 digits, 20 after the point)",
            {"limit": MAX_EXPONENT},
        )
    return value


# A finite exact number (a JSON number or a string holding one; no NaN, no
# infinity), of at most 40 digits, 20 after the point (`1e999999` would be a
# million digits) and an exponent PostgreSQL holds, written back as canonical
# decimal text.
FiniteDecimal = Annotated[
    Decimal,
    Field(allow_inf_nan=False, max_digits=40, decimal_places=20),
    AfterValidator(_storable_exponent),
    PlainSerializer(decimal_text, return_type=str, when_used="json"),
]
Text256 = Annotated[StrictStr, Field(min_length=1, max_length=256)]
# A plain top-level name (at most 256 characters) or a path (`tally.core.paths`).
PropertyName = Annotated[StrictStr, Field(min_length=1, max_length=1024)]


# A filter value is a typed JSON scalar; null is refused (a missing or null
# property already fails IN and passes NOT IN, so null in a list means nothing).
def _filter_value(value: object) -> str | int | float | bool:
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
        raise PydanticCustomError(
            "int_range", "integers must fit in 64 bits; write larger numbers as decimals"
        )
    if isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise PydanticCustomError("finite_number", "must be a finite number")
    raise PydanticCustomError(
        "filter_value",
        "must be a string, number or boolean (null and objects are not filter values)",
    )


FilterValue = Annotated[
    str | int | float | bool,
    PlainValidator(_filter_value, json_schema_input_type=str | int | float | bool),
]


def _rule(field: str, reason: str) -> PydanticCustomError:
    return PydanticCustomError(
        "metric_rule", "{field}: {reason}", {"field": field, "reason": reason}
    )


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


# How deep a free JSON document (a metric's `metadata`, a value's `_metadata`)
# may nest: PostgreSQL's jsonb and the JSON codec refuse deeper documents with a
# recursion error.
MAX_METADATA_DEPTH = 32
# The most bytes a metric's `metadata` takes as JSON: it is read with every definition.
MAX_METRIC_METADATA_BYTES = 16384


def metadata_problem(value: object) -> str | None:
    """Why a free JSON document cannot be stored as sent, or None (iterative: no recursion)."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "must not hold a number beyond the range of a double (such as 1e400)"
        children: list[object]
        if isinstance(item, dict):
            children = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_METADATA_DEPTH:
            return f"must nest at most {MAX_METADATA_DEPTH} objects or arrays deep"
        pending.extend((child, depth + 1) for child in children)
    return None


def metric_metadata_problem(value: Any) -> str | None:
    """`metadata_problem`, and at most MAX_METRIC_METADATA_BYTES as JSON."""
    if not isinstance(value, dict):
        return None  # the type check names it
    if (problem := metadata_problem(value)) is not None:
        return problem
    try:
        size = len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return "must be a JSON object"
    if size > MAX_METRIC_METADATA_BYTES:
        return f"must take at most {MAX_METRIC_METADATA_BYTES} bytes as JSON, not {size}"
    return None


def field_alias(field: str) -> str:
    return to_camel(field)


IMMUTABLE_FIELDS: tuple[str, ...] = (
    "uid",
    "event_type",
    "aggregation_type",
    "aggregation_property",
    "value_type",
    "metric_type",
    "grouping_property",
    "grouping_properties",
    "property_filters",
    "properties_to_negate",
    "presence_filters",
    "case_sensitive",
    "time_units",
    "timezone",
    "source",
    "context_type",
    "value_kind",
    "storage_unit",
    "is_snapshot",
    "period_definition",
)
MUTABLE_FIELDS: tuple[str, ...] = (
    "name",
    "description",
    "unit",
    "deleted_at",
    "target_operator",
    "target_value",
    "target_direction",
    "formula",
    "period_type",
    "period_value",
    "metadata",
)


# Characters a derived uid may drop without losing what tells names apart:
# spaces and word punctuation become the `_` between words. Any other one it
# drops (a symbol such as `€`, `$`, `%`, `+`, `&`, `/`, or a letter of another
# script) makes the slug lossy: a hash of the name is appended.
SEPARATORS = frozenset(" \t\n\r_-.,:;!?'\"()[]{}")


def _digest(name: str, digits: int) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:digits]


def uid_from_name(name: str) -> str:
    """A stable uid for a definition that has none (Sequence's and Cuoral's
    bodies): `name` with its accents taken off (NFKD, combining marks dropped),
    lowercased, every run of other characters one `_`, at most 128 characters,
    starting with a letter (`m_` is put first otherwise). When that drops a
    character other than a space or word punctuation (`SEPARATORS`), the slug
    cannot tell names apart (`Revenue (€)`, `Revenue ($)`), so `_` and 8 hex
    digits of the name's SHA-256 end it. A name with no letter or digit left
    (`日本語`, `!!!`) is `m_` and 12 hex digits of its SHA-256."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    lowered = plain.lower()
    slug = "".join(c if "a" <= c <= "z" or "0" <= c <= "9" else " " for c in lowered)
    uid = "_".join(slug.split())
    if not uid:
        return "m_" + _digest(name, 12)
    if not "a" <= uid[0] <= "z":
        uid = "m_" + uid
    lossy = any(
        not ("a" <= c <= "z" or "0" <= c <= "9" or c in SEPARATORS or c.isspace()) for c in lowered
    )
    if lossy:
        return uid[:119].rstrip("_") + "_" + _digest(name, 8)
    return uid[:128].rstrip("_")
