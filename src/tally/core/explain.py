"""Why an event counts or not (`tally explain`), answered by the worker's own core.

Nothing here re-implements matching: the event is decoded and applied by the
native core exactly as a worker does, once per live metric of its eventType.
When a metric does not take the event, the core is asked again with each
filter alone (filters are AND-ed): each one under which the metric still does
not take the event is one that failed. The value shown is the event's value at that filter's path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tally.core.engine import Deltas, aggregate, new_core
from tally.core.events import DecodeLimits, Rejection, decode_event
from tally.core.metrics import MetricSpec, SpecTuple, native_spec
from tally.core.paths import Segment

_FILTERS = 6
_PRESENCE = 10


def _read(properties: Mapping[str, Any], path: Sequence[Segment]) -> Any:
    value: Any = properties
    for segment in path:
        if isinstance(segment, int) and isinstance(value, list):
            found = -len(value) <= segment < len(value)
        else:
            found = isinstance(segment, str) and isinstance(value, dict) and segment in value
        if not found:
            return None
        value = value[segment]
    return value


def _shown(value: Any) -> Any:
    return value if value is None or isinstance(value, str | bool | int) else str(value)


def _stamp(seconds: int) -> str:
    """A period bound (POSIX seconds, as the core keeps it) in ISO 8601 UTC."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _delta(aggregation: str, value: Any) -> dict[str, Any]:
    """The core's pending value for one event, as the change it makes."""
    if isinstance(value, frozenset):
        return {"member": sorted(value)[0] if value else None}
    if aggregation == "AVG" and isinstance(value, tuple):
        return {"candidate": str(value[1])}
    if isinstance(value, tuple):  # LATEST: (value, microseconds, id)
        return {"candidate": _shown(value[0]), "latestId": value[2]}
    if aggregation in ("COUNT", "SUM"):
        return {"add": str(value)}
    return {"candidate": str(value)}


def _rollups(metric: MetricSpec, deltas: Deltas) -> list[dict[str, Any]]:
    """The rollup rows the event would change, from the core's own Deltas."""
    if metric.grouping_properties is not None:
        names = list(metric.grouping_properties)
    else:
        names = [metric.grouping_property] if metric.grouping_property is not None else []
    rows = []
    for (uid, _customer, group, unit, start), (end, _events, value) in sorted(
        deltas.snapshot().items(), key=lambda item: (item[0][3], item[0][4], item[0][2])
    ):
        if uid != metric.uid:
            continue
        rows.append(
            {
                "timeUnit": unit,
                "periodStart": _stamp(start),
                "periodEnd": _stamp(end),
                "groupKey": group,
                "groupBy": names,
                "aggregation": str(metric.aggregation_type),
                **_delta(str(metric.aggregation_type), value),
            }
        )
    return rows


def _outcome(
    spec: SpecTuple, raw: bytes, now: float, limits: DecodeLimits
) -> tuple[str, str | None, Deltas]:
    """("applied" | "skipped" | "unmatched", skip reason, its Deltas) from the core."""
    core = new_core()
    core.set_metrics([spec])
    deltas = aggregate(core, [raw], now, limits)
    if deltas.applied.get(spec[0]):
        return "applied", None, deltas
    for (uid, reason), count in deltas.skipped.items():
        if uid == spec[0] and count:
            return "skipped", reason, deltas
    return "unmatched", None, deltas


def _only(spec: SpecTuple, index: int, at: int) -> SpecTuple:
    """`spec` with one filter (property or presence) and no other."""
    parts: list[Any] = list(spec)
    chosen = parts[index][at]
    parts[_FILTERS] = []
    parts[_PRESENCE] = []
    parts[index] = [chosen]
    only: Any = tuple(parts)
    return only  # type: ignore[no-any-return]


NOT_CHECKED: dict[str, Any] = {"checked": False, "why": "no database configured"}


@dataclass(frozen=True, slots=True)
class NotRunning:
    """A live definition workers refuse to run (tally.worker.definitions.runnable),
    with its eventType when it is known (a definition that does not validate may
    not name one)."""

    uid: str
    event_type: str | None
    reason: str  # invalid_definition, unknown_timezone, cannot_compile
    detail: str


def dedup_digest(raw: bytes, now: float, limits: DecodeLimits) -> bytes | None:
    """The event's 16-byte dedup digest as the core computes it; None if refused."""
    batch = new_core().decode([raw], now, limits.native())
    digests: bytes = batch.digests
    return digests[:16] if len(digests) >= 16 else None


def dedup_answer(topic: str, partition: int, duplicate: bool) -> dict[str, Any]:
    return {"checked": True, "topic": topic, "partition": partition, "duplicate": duplicate}


def explain(
    raw: bytes,
    metrics: Iterable[MetricSpec],
    now: float,
    limits: DecodeLimits,
    dedup: Mapping[str, Any] | None = None,
    not_running: Iterable[NotRunning] = (),
) -> dict[str, Any]:
    """The decode outcome, then for each live metric of the event's type what it
    did; `dedup` says whether its id is already in its partition's window.
    `metrics` are those a worker runs; each of `not_running` of the event's type
    is answered as outcome not_running, with the worker's reason and detail."""
    decoded = decode_event(raw, now, limits)
    if isinstance(decoded, Rejection):
        return {
            "decoded": False,
            "reason": decoded.reason.value,
            "detail": decoded.detail,
            "metrics": [],
        }
    found = []
    for metric in sorted(metrics, key=lambda m: m.uid):
        if metric.deleted_at is not None or metric.event_type != decoded.event_type:
            continue
        spec = native_spec(metric)
        outcome, skip, deltas = _outcome(spec, raw, now, limits)
        entry: dict[str, Any] = {"uid": metric.uid, "outcome": outcome}
        if outcome == "applied":
            entry["rollups"] = _rollups(metric, deltas)
        if skip is not None:
            entry["skipReason"] = skip
        if outcome == "unmatched":
            failed = []
            names = sorted(metric.property_filters)
            for at, (path, negated, values) in enumerate(spec[6]):  # _FILTERS
                if _outcome(_only(spec, _FILTERS, at), raw, now, limits)[0] == "unmatched":
                    failed.append(
                        {
                            "filter": names[at],
                            "negated": negated,
                            "expected": [_shown(v) for v in values],
                            "value": _shown(_read(decoded.properties, path)),
                        }
                    )
            present = sorted(metric.presence_filters)
            for at, (path, must) in enumerate(spec[10]):  # _PRESENCE
                if _outcome(_only(spec, _PRESENCE, at), raw, now, limits)[0] == "unmatched":
                    failed.append(
                        {
                            "presence": present[at],
                            "mustBePresent": must,
                            "value": _shown(_read(decoded.properties, path)),
                        }
                    )
            entry["failed"] = failed
        found.append(entry)
    found.extend(
        {"uid": r.uid, "outcome": "not_running", "reason": r.reason, "detail": r.detail}
        for r in not_running
        if r.event_type == decoded.event_type
    )
    found.sort(key=lambda entry: str(entry["uid"]))
    return {
        "decoded": True,
        "id": decoded.id,
        "eventType": decoded.event_type,
        "customerId": decoded.customer_id,
        "metrics": found,
        "dedup": dict(dedup if dedup is not None else NOT_CHECKED),
    }


def _change(rollup: Mapping[str, Any]) -> str:
    if "add" in rollup:
        change = f"{rollup['aggregation']} +{rollup['add']}"
    elif "member" in rollup:
        change = f"UNIQUE member {rollup['member']!r}"
    else:
        change = f"{rollup['aggregation']} candidate {rollup['candidate']!r}"
    group = ""
    if rollup["groupBy"]:
        group = f" group {','.join(rollup['groupBy'])}={rollup['groupKey']!r}"
    return f"{rollup['timeUnit']} {rollup['periodStart']} .. {rollup['periodEnd']}{group}: {change}"


def render(answer: Mapping[str, Any]) -> str:
    """The answer for a terminal."""
    if not answer["decoded"]:
        return (
            f"refused: {answer['reason']} ({answer['detail']}); it goes to the dead-letter topic\n"
        )
    lines = [
        f"decoded: id={answer['id']} eventType={answer['eventType']} "
        f"customerId={answer['customerId']}"
    ]
    if not answer["metrics"]:
        lines.append(f"no live metric has eventType {answer['eventType']}: unmatched")
    for metric in answer["metrics"]:
        line = f"  {metric['uid']}: {metric['outcome']}"
        if "skipReason" in metric:
            line += f" ({metric['skipReason']})"
        if metric["outcome"] == "not_running":
            line += f": workers refuse it ({metric['reason']}: {metric['detail']})"
        lines.append(line)
        lines.extend("    " + _change(rollup) for rollup in metric.get("rollups", []))
        for miss in metric.get("failed", []):
            if "filter" in miss:
                wanted = "not one of" if miss["negated"] else "one of"
                lines.append(
                    f"    filter {miss['filter']}: the value is {miss['value']!r}, "
                    f"expected {wanted} {miss['expected']!r}"
                )
            else:
                must = "present" if miss["mustBePresent"] else "absent"
                lines.append(
                    f"    presence {miss['presence']}: must be {must} (is {miss['value']!r})"
                )
    lines.append(_dedup_line(answer["dedup"]))
    return "\n".join(lines) + "\n"


def _dedup_line(dedup: Mapping[str, Any]) -> str:
    if not dedup["checked"]:
        return f"dedup window: not checked ({dedup['why']})"
    where = f"{dedup['topic']} partition {dedup['partition']}"
    if dedup["duplicate"]:
        return f"dedup window of {where}: id already counted (this record, or an earlier one with the same id)"
    return f"dedup window of {where}: new"
