"""A refused definition lists its shape errors and its cross-field rules at
once (issue 14 review, item 7); a rule that reads a refused field is not
judged, so no refusal is only a consequence of another."""

from __future__ import annotations

from typing import Any

import pytest

from tally.contracts.metric import MetricDefinitionError, parse_metric

BASE: dict[str, Any] = {"uid": "m", "name": "M", "eventType": "e", "aggregationType": "SUM"}


def refused(**changes: Any) -> list[str]:
    document = {**BASE, **changes}
    document = {k: v for k, v in document.items() if v is not None}
    with pytest.raises(MetricDefinitionError) as caught:
        parse_metric(document)
    return [error.field for error in caught.value.errors]


@pytest.mark.parametrize(
    ("changes", "fields"),
    [
        # A bad timeUnits entry no longer hides the missing aggregationProperty.
        ({"timeUnits": ["fortnight"]}, ["timeUnits.0", "aggregationProperty"]),
        (
            {"timeUnits": ["fortnight"], "targetValue": "1", "metricType": "GROUPED"},
            ["timeUnits.0", "aggregationProperty", "targetValue", "groupingProperty"],
        ),
        # A NUL stops validation before the fields: the rest is still judged.
        ({"name": "a\x00", "timeUnits": ["x"]}, ["name", "timeUnits.0", "aggregationProperty"]),
        # Rules reading a refused field are not judged: SUMM is not SUM.
        (
            {"aggregationType": "SUMM", "metricType": "GROUPED"},
            ["aggregationType", "groupingProperty"],
        ),
        (
            {"metricType": "GROUPPED", "groupingProperty": "x"},
            ["metricType", "aggregationProperty"],
        ),
        ({"source": "EXTRNAL", "eventType": None}, ["source"]),
        ({"periodType": "weekly", "periodValue": "7-day"}, ["periodType", "aggregationProperty"]),
    ],
)
def test_shape_errors_and_cross_field_rules_are_listed_together(
    changes: dict[str, Any], fields: list[str]
) -> None:
    assert refused(**changes) == fields


def test_a_definition_with_rules_only_is_refused_as_before() -> None:
    assert refused(metricType="GROUPED") == ["aggregationProperty", "groupingProperty"]
