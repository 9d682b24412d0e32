"""The usage event (docs/design.md §2.1) as a pydantic model, for tools and schemas.

The worker does not use this per event (see `tally.core.events.decode_event`,
which enforces the same rules far more cheaply); `tally send` and the tests do,
and a test holds the model, the decoder and `schemas/usage-event.schema.json`
to one answer over the same inputs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tally.core.events import MAX_TEXT_LENGTH, parse_timestamp
from tally.core.numbers import contains_nul

# Sequence's names for the same fields; either may be used, not both differently.
ALIASES: dict[str, str] = {
    "customerEventId": "id",
    "customerAlias": "customerId",
    "eventTimestamp": "timestamp",
    "eventProperties": "properties",
}

Text = Annotated[StrictStr, Field(min_length=1, max_length=MAX_TEXT_LENGTH)]
# Scalars, or nested objects and arrays that metrics read through JSONPath.
PropertyValue = (
    StrictStr
    | StrictBool
    | StrictInt
    | StrictFloat
    | Decimal
    | None
    | list[JsonValue]
    | dict[str, JsonValue]
)


class UsageEventModel(BaseModel):
    """One usage event. Unknown top-level fields are kept, not refused."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    id: Text
    event_type: Text = Field(alias="eventType")
    customer_id: Text = Field(alias="customerId")
    timestamp: StrictStr
    properties: dict[str, PropertyValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fold_aliases(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if contains_nul(data):
            # The worker refuses NUL too: PostgreSQL text cannot hold it.
            raise PydanticCustomError("nul", "must not contain the NUL character (\\u0000)")
        folded = dict(data)
        for alias, name in ALIASES.items():
            if alias not in folded:
                continue
            value = folded.pop(alias)
            current = folded.get(name)
            if current is not None and value is not None and current != value:
                raise PydanticCustomError(
                    "alias_conflict",
                    "{name} and its alias {alias} differ",
                    {"name": name, "alias": alias},
                )
            if current is None:
                folded[name] = value
        if folded.get("properties", ...) is None:
            folded["properties"] = {}
        return folded

    @field_validator("timestamp")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        if parse_timestamp(value) is None:
            raise PydanticCustomError(
                "bad_timestamp", "must be an RFC 3339 date-time with an offset"
            )
        return value
