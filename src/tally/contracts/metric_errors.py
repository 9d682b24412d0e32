"""How a refused definition is told (tally.contracts.metric): each field and
why, every one at once, with the cross-field rules of the fields whose own
shape was fine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from tally.contracts.metric_fields import SKIPPED_FIELDS, STORED_ZONE
from tally.core.numbers import contains_nul


class FieldError:
    __slots__ = ("field", "reason", "type")

    def __init__(self, field: str, reason: str, type: str = "value_error") -> None:
        self.field = field
        self.reason = reason
        self.type = type

    def __repr__(self) -> str:
        return f"FieldError({self.field!r}, {self.reason!r})"

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class MetricDefinitionError(ValueError):
    """A definition was refused; `errors` names each field and why."""

    def __init__(self, errors: Iterable[FieldError], uid: str | None = None) -> None:
        self.errors = list(errors)
        self.uid = uid
        where = f"metric {uid!r}" if uid else "metric definition"
        super().__init__(f"{where} refused: " + "; ".join(map(str, self.errors)))


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for error in exc.errors(include_url=False):
        ctx = error.get("ctx") or {}
        if error["type"] == "metric_rule":
            errors.append(FieldError(str(ctx["field"]), str(ctx["reason"]), "metric_rule"))
            for field, reason in ctx.get("more") or ():
                errors.append(FieldError(str(field), str(reason), "metric_rule"))
            continue
        parts = [str(part) for part in error["loc"]]
        message = error["msg"]
        if parts[-1:] == ["[key]"]:  # a bad key of a mapping: name the mapping
            message = f"key {parts[-2]!r}: {message}"
            parts = parts[:-2]
        loc = ".".join(parts) or "(definition)"
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "required"
        errors.append(FieldError(loc, message, error["type"]))
    return errors


# What a field refused for its shape stands in as, so that the rules of the
# other fields are still judged (a rule reading a stand-in is skipped).
_STAND_INS = {"uid": "x", "name": "x", "aggregationType": "COUNT"}


def rules_despite_shapes(
    model: type[BaseModel],
    data: Mapping[str, Any],
    exc: ValidationError,
    named: list[FieldError],
    stored_zone: str | None,
) -> list[FieldError]:
    """The cross-field rules (and shapes not judged yet) of a definition whose
    fields' own shapes were refused: pydantic runs no model rule then. Judged
    again without the refused fields, rules reading them skipped, so every
    refusal is listed at once and none is a consequence of another."""

    def shapes(error: ValidationError) -> set[str]:
        return {
            str(e["loc"][0])
            for e in error.errors(include_url=False)
            if e["type"] != "metric_rule" and e["loc"]
        }

    # A NUL anywhere stops validation before the fields (`_no_nul`): judge the rest.
    refused = shapes(exc) | {str(k) for k, v in data.items() if contains_nul(k) or contains_nul(v)}
    seen = {e.field for e in named}
    found: list[FieldError] = []
    while refused:
        rest = {k: v for k, v in data.items() if str(k) not in refused}
        rest.update({k: v for k, v in _STAND_INS.items() if k in refused})
        try:
            model.model_validate(rest, context={STORED_ZONE: stored_zone, SKIPPED_FIELDS: refused})
        except ValidationError as again:
            for error in _field_errors(again):
                if error.field not in seen:
                    seen.add(error.field)
                    found.append(error)
            more = shapes(again) - refused
            if more:  # fields not judged before (after a NUL): their rules next
                refused |= more
                continue
        break
    return found
