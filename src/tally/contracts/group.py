"""A rollup's group by name: `group_key` read with its metric's grouping
properties (docs/metering-model.md, "Grouping").

- no grouping: the key is `""` and the group is `{}`;
- one key: the key is the property's text, `{property: key}`;
- several keys: the key is a canonical JSON array of texts (null for a
  missing key), `{property: text or None, ...}` in definition order.

Properties are named as the definition writes them. A filter may name one by
any spelling of the same path (`$.a`, `$['a']`, `a`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson

from tally.core.paths import PathError, parse_path

Group = dict[str, str | None]


class Grouped(Protocol):
    @property
    def grouping_property(self) -> str | None: ...
    @property
    def grouping_properties(self) -> Sequence[str] | None: ...


def grouping_names(
    grouping_property: str | None, grouping_properties: Sequence[str] | None
) -> tuple[str, ...]:
    """The grouping properties as written, in definition order."""
    if grouping_properties is not None:
        return tuple(grouping_properties)
    return (grouping_property,) if grouping_property is not None else ()


def names_of(definition: Grouped) -> tuple[str, ...]:
    return grouping_names(definition.grouping_property, definition.grouping_properties)


def encode_group(texts: Sequence[str | None]) -> str:
    """The several-key `group_key`, exactly as the worker writes it."""
    return json.dumps(list(texts), ensure_ascii=False, separators=(",", ":"))


def decode_group(names: Sequence[str], group_key: str) -> Group | None:
    """The group by name; None when `group_key` is not one this grouping writes."""
    if not names:
        return {} if group_key == "" else None
    if len(names) == 1:
        return {names[0]: group_key}
    try:
        texts = orjson.loads(group_key)
    except orjson.JSONDecodeError:
        return None
    if (
        not isinstance(texts, list)
        or len(texts) != len(names)
        or not all(t is None or isinstance(t, str) for t in texts)
    ):
        return None
    return dict(zip(names, texts, strict=True))


def group_key_problem(names: Sequence[str], group_key: str) -> str | None:
    """Why `group_key` is not one the worker could write for this grouping; None if it is."""
    if len(names) < 2:
        if not names and group_key:
            return "the metric is not grouped: its only group is ''"
        return None
    decoded = decode_group(names, group_key)
    shape = f"a JSON array of {len(names)} strings or nulls, one per groupingProperties entry"
    if decoded is None:
        return f"must be {shape}"
    if any(t is not None and "\x00" in t for t in decoded.values()):
        return "must not contain the NUL character (\\u0000)"
    canonical = encode_group(list(decoded.values()))
    if canonical != group_key:
        return f"must be in canonical form (no whitespace, minimal escapes): {canonical[:64]}"
    return None


@dataclass(frozen=True, slots=True)
class GroupTerm:
    """`group_key = text` (position None: a one-key group), or the element at
    `position` of a several-key group_key equals `text` (a null never does)."""

    position: int | None
    text: str


class GroupFilterError(ValueError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"group.{name}: {reason}")


def _same_property(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return parse_path(a) == parse_path(b)
    except PathError:
        return False


def group_terms(names: Sequence[str], wanted: Mapping[str, str]) -> tuple[GroupTerm, ...]:
    """The terms for `{property: text}`; GroupFilterError names a property the
    grouping does not have."""
    terms = []
    for name, text in wanted.items():
        # The spelling as written wins; then any spelling of the same path.
        found = [n for n, known in enumerate(names) if known == name] or [
            n for n, known in enumerate(names) if _same_property(known, name)
        ]
        if not found:
            known = ", ".join(repr(n) for n in names) or "none: the metric is not grouped"
            raise GroupFilterError(name, f"not a grouping property of the metric (it has {known})")
        terms.append(GroupTerm(None if len(names) == 1 else found[0], text))
    return tuple(terms)
