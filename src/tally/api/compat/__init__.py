"""Thin compatibility paths for the seed APIs (docs/api.md, "Seed compatibility").

Each seed module maps its page's path, field names, envelope and status codes
onto Tally's one model: the body is renamed into a Tally definition, validated
by the contract (`parse_metric`, through `routes_metrics.parse_definition`),
stored by `tally.store.definitions`, and answered in the seed's shape. A
refusal names the seed's own field names, every bad field at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import Request

from tally.api.auth import Principal
from tally.api.body import read_json, require_object
from tally.api.errors import ApiError, item
from tally.api.routes_metrics import insert_or_conflict, parse_definition, with_derived_uid
from tally.contracts.metric import UsageMetric


@dataclass(frozen=True)
class Seed:
    """How one seed's definition body becomes a Tally definition."""

    fields: Mapping[str, str]  # the seed's name -> Tally's wire name
    required: tuple[str, ...] = ()  # required by the seed's page
    ignored: frozenset[str] = frozenset()  # accepted, not stored (docs/api.md says why)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # what the seed implies
    name_field: str = "name"  # the uid is derived from it when there is none
    exact: frozenset[str] = frozenset()  # the seed's numbers read as exact decimals

    def seed_name(self, tally_name: str) -> str:
        for seed, tally in self.fields.items():
            if tally == tally_name:
                return seed
        if tally_name == "uid":  # the seed has none: it is derived from the name
            return self.name_field
        return tally_name

    def translate(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The Tally document, and a refusal of each missing seed-required field
        and of each key that is not the seed's. Only the seed's own fields are
        taken: a Tally field (`source`, `eventType`, ...) is refused by name, so
        what the seed pins in `fixed` (source, aggregation, units) holds; the
        rest of `fixed` are defaults the seed's fields may override."""
        document: dict[str, Any] = dict(self.fixed)
        problems: list[dict[str, Any]] = []
        for key, value in body.items():
            if key in self.ignored:
                continue
            if key not in self.fields:
                problems.append(item(["body", key], "not a field of this body", "extra_forbidden"))
                continue
            document[self.fields[key]] = value
        problems.extend(
            item(["body", name], "required", "missing")
            for name in self.required
            if name not in body
        )
        return document, problems

    def renamed(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Tally's locs of a refusal, in the seed's names."""
        out = []
        for error in items:
            loc = list(error["loc"])
            if len(loc) > 1 and loc[0] == "body" and isinstance(loc[1], str):
                loc[1] = self.seed_name(loc[1])
            out.append({**error, "loc": loc})
        return out


async def create_metric(
    seed: Seed,
    request: Request,
    principal: Principal,
    pool: asyncpg.Pool,
    adapt: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
) -> UsageMetric:
    """Translate, validate (every field at once), store; 422 or 409 in seed names."""
    body = require_object(await read_json(request, seed.exact))
    document, missing = seed.translate(body)
    errors = list(missing)
    if adapt is not None:
        adapt(document, errors)  # a seed's own value mapping; it may add refusals
    derived = "uid" not in document
    named = with_derived_uid(document)
    try:
        definition = parse_definition(named)
    except ApiError as exc:
        found = exc.items
        if derived and any(e["loc"][:2] == ["body", "name"] for e in found):
            # The uid was derived from a name that is itself refused: one error, on the name.
            found = [e for e in found if e["loc"][:2] != ["body", "uid"]]
        named_already = [e["loc"] for e in errors]
        more = [e for e in seed.renamed(found) if e["loc"] not in named_already]
        raise ApiError(422, [*errors, *more]) from None
    if errors:
        raise ApiError(422, errors)
    async with pool.acquire() as connection:
        try:
            return await insert_or_conflict(connection, definition, derived, principal.name)
        except ApiError as exc:
            if derived:
                exc.items = [{**i, "loc": ["body", seed.name_field]} for i in exc.items]
            raise


def stamp(value: Any) -> str:
    """RFC 3339 in UTC with a Z, as the seed pages write times."""
    text: str = value.isoformat()
    return text.replace("+00:00", "Z")
