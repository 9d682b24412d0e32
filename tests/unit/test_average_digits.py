"""AVG beyond 28 significant digits: the core and the reference agree exactly.

Decimal's default context has 28 digits; an average of amounts near the SUM
bound (10^31) needs more. The reference once rounded there (a review found
`scaleb` outside its exact context), which flagged a correct core.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tally.contracts.metric import parse_metric
from tally.core.engine import aggregate, new_core
from tally.core.events import DecodeLimits
from tally.core.metrics import MetricIndex
from tests import reference

NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z
AVG = {
    "uid": "mean",
    "name": "mean",
    "eventType": "e",
    "aggregationType": "AVG",
    "aggregationProperty": "n",
    "timeUnits": ["day"],
}


def _events(amounts: list[str]) -> list[bytes]:
    return [
        json.dumps(
            {
                "id": f"e{i}",
                "eventType": "e",
                "customerId": "c",
                "timestamp": "2026-11-18T08:00:00Z",
                "properties": {"n": amount},
            }
        ).encode()
        for i, amount in enumerate(amounts)
    ]


@pytest.mark.parametrize(
    ("amounts", "expected"),
    [
        (["12345678901234567.123456789012"], "12345678901234567.123456789012"),
        (["12345678901234567890", "1", "1"], "4115226300411522630.666666666667"),
        (
            ["-854911524290714283.69999913158968175781", "0", "0"],
            "-284970508096904761.233333043863",
        ),
    ],
)
def test_wide_averages_are_exact_in_the_core_and_the_reference(
    amounts: list[str], expected: str
) -> None:
    raws = _events(amounts)
    core = new_core(MetricIndex([parse_metric(AVG)]))
    columns = aggregate(core, raws, NOW, DecodeLimits()).kind_columns()
    ((core_value,),) = [columns[7]]
    assert Decimal(core_value) == Decimal(expected)
    (row,) = reference.reference_rows([AVG], raws).values()
    assert row.value == Decimal(expected)
