"""`python -m tally.bench`: arguments it cannot use get the usage line, not a traceback."""

from __future__ import annotations

import pytest

from tally.bench import core
from tally.bench.__main__ import main


@pytest.mark.parametrize(
    "argv", [["core", "many"], ["core", "1000", "1", "1,x"], ["core", "1000", "1", "0"]]
)
def test_bad_numbers_answer_usage_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: python -m tally.bench core [EVENTS] [ROUNDS] [METRICS,...]" in err


def test_help_prints_usage_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage:" in capsys.readouterr().err


def test_core_takes_a_list_of_metric_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["core", "2000", "1", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "decode + aggregate, 1 metric " in out
    assert "decode + aggregate, 3 metrics" in out
    assert "decode + aggregate, 10 metrics" not in out


def test_more_metrics_hold_more_rollups() -> None:
    results = {r.name: r for r in core.run_core_bench(2000, 1, (1, 3))}
    one = results["decode + aggregate, 1 metric"].rollups
    three = results["decode + aggregate, 3 metrics"].rollups
    assert 0 < one < three
