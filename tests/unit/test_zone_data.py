"""Zone data is pinned to the `tzdata` package, so every worker of a fleet
computes the same periods whatever the host's /usr/share/zoneinfo holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zoneinfo
from importlib import resources
from pathlib import Path

import pytest
import tzdata

import tally

SRC = Path(tally.__file__).resolve().parents[1]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(SRC), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_importing_tally_empties_the_tz_search_path() -> None:
    assert zoneinfo.TZPATH == ()


def test_a_zone_only_the_host_database_has_is_not_used(tmp_path: Path) -> None:
    # A host tz database (PYTHONTZPATH stands for /usr/share/zoneinfo) with a zone
    # the tzdata package lacks: newer or patched OS data.
    (tmp_path / "Tally").mkdir()
    utc = resources.files("tzdata").joinpath("zoneinfo", "UTC")
    with utc.open("rb") as source, (tmp_path / "Tally" / "Host_Only").open("wb") as target:
        shutil.copyfileobj(source, target)
    code = (
        "import zoneinfo\n"
        "zoneinfo.ZoneInfo('Tally/Host_Only')\n"  # found before tally is imported...
        "import tally.core.periods as periods\n"
        "from tally.contracts.metric import parse_metric\n"
        "print(zoneinfo.TZPATH)\n"
        "try:\n"
        "    periods.zone('Tally/Host_Only')\n"
        "except ValueError:\n"
        "    print('zone refused')\n"
        "try:\n"
        "    parse_metric({'uid': 'm', 'name': 'M', 'eventType': 'e',"
        " 'aggregationType': 'COUNT', 'timezone': 'Tally/Host_Only'})\n"
        "except ValueError:\n"
        "    print('definition refused')\n"
        "print(periods.zone('Europe/Berlin').key)\n"
    )
    result = run_python(code, PYTHONTZPATH=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == [
        "()",
        "zone refused",
        "definition refused",
        "Europe/Berlin",
        "",
    ]


def test_zones_are_read_from_the_tzdata_package() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    assert berlin.key == "Europe/Berlin"
    with resources.files("tzdata").joinpath("zones").open() as listing:
        packaged = {line.strip() for line in listing if line.strip()}
    assert zoneinfo.available_timezones() == packaged


def test_the_zone_data_version_is_the_tzdata_package_one() -> None:
    from tally.zones import zone_data_version

    assert zone_data_version() == tzdata.IANA_VERSION
    assert len(zone_data_version()) == 5  # e.g. 2025b


def test_an_unknown_zone_is_refused_naming_it() -> None:
    from tally.contracts.metric import MetricDefinitionError, parse_metric

    definition = {"uid": "m", "name": "M", "eventType": "e", "aggregationType": "COUNT"}
    with pytest.raises(MetricDefinitionError) as refused:
        parse_metric({**definition, "timezone": "Mars/Olympus_Mons"})
    (error,) = refused.value.errors
    assert (error.field, error.reason) == (
        "timezone",
        "'Mars/Olympus_Mons' is not an IANA time zone name",
    )
