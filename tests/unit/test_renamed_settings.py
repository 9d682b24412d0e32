"""Settings renamed so "metrics" means usage metrics only: the old flag and
variable still work, with a warning naming the new one, and old and new with
different values stop the process at start naming both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tally.cli.main import build_parser
from tally.cli.options import settings_from
from tally.config import ConfigError, SettingDeprecationWarning, load_settings, without_renamed

NEW_FLAGS = {
    "--definitions-poll-interval": ("definitions_poll_interval", "7s", 7.0),
    "--telemetry-host": ("telemetry_host", "127.0.0.2", "127.0.0.2"),
    "--telemetry-port": ("telemetry_port", "9000", 9000),
}
OLD = {
    "definitions_poll_interval": "metrics_poll_interval",
    "telemetry_host": "metrics_host",
    "telemetry_port": "metrics_port",
}


def test_the_new_flags_and_variables_set_the_settings_without_a_warning() -> None:
    parser = build_parser()
    for flag, (name, text, expected) in NEW_FLAGS.items():
        assert getattr(settings_from(parser.parse_args(["run", flag, text])), name) == expected
        assert getattr(load_settings({}, {"TALLY_" + name.upper(): text}), name) == expected


@pytest.mark.parametrize("new", sorted(OLD))
def test_an_old_variable_still_works_and_the_warning_names_the_new_one(new: str) -> None:
    _flag, text, expected = next((f, t, e) for f, (n, t, e) in NEW_FLAGS.items() if n == new)
    old_env = "TALLY_" + OLD[new].upper()
    with pytest.warns(
        SettingDeprecationWarning, match=f"{old_env} is deprecated; use TALLY_{new.upper()}"
    ):
        settings = load_settings({}, {old_env: text})
    assert getattr(settings, new) == expected


@pytest.mark.parametrize("new", sorted(OLD))
def test_an_old_flag_still_works_and_the_warning_names_the_new_one(new: str) -> None:
    flag, text, expected = next((f, t, e) for f, (n, t, e) in NEW_FLAGS.items() if n == new)
    old_flag = "--" + OLD[new].replace("_", "-")
    args = build_parser().parse_args(["run", old_flag, text])
    with pytest.warns(SettingDeprecationWarning, match=f"{old_flag} is deprecated; use {flag}"):
        settings = settings_from(args)
    assert getattr(settings, new) == expected


def test_old_and_new_with_different_values_is_refused_naming_both() -> None:
    with pytest.warns(SettingDeprecationWarning), pytest.raises(ConfigError) as refused:
        load_settings({}, {"TALLY_TELEMETRY_PORT": "9000", "TALLY_METRICS_PORT": "9001"})
    assert "TALLY_TELEMETRY_PORT" in str(refused.value)
    assert "TALLY_METRICS_PORT" in str(refused.value)
    args = build_parser().parse_args(["run", "--telemetry-port", "9000", "--metrics-port", "9001"])
    with pytest.warns(SettingDeprecationWarning), pytest.raises(ConfigError) as refused:
        settings_from(args)
    assert "--telemetry-port" in str(refused.value)
    assert "--metrics-port" in str(refused.value)


def test_old_and_new_with_the_same_value_is_accepted_with_the_warning() -> None:
    with pytest.warns(SettingDeprecationWarning):
        settings = load_settings({}, {"TALLY_TELEMETRY_PORT": "9000", "TALLY_METRICS_PORT": "9000"})
    assert settings.telemetry_port == 9000


def test_a_bad_value_under_the_old_name_names_the_old_name() -> None:
    with pytest.warns(SettingDeprecationWarning), pytest.raises(ConfigError) as refused:
        load_settings({}, {"TALLY_METRICS_PORT": "not-a-port"})
    assert "TALLY_METRICS_PORT" in str(refused.value)


def test_a_child_given_the_new_names_does_not_inherit_the_old_ones() -> None:
    """`tally demo`, the bench and the test harness start workers with the new
    names; an inherited old name with another value made them refuse to start."""
    inherited = {
        "TALLY_METRICS_HOST": "0.0.0.0",
        "TALLY_METRICS_PORT": "9100",
        "TALLY_METRICS_POLL_INTERVAL": "3",
        "TALLY_TOPIC": "events",
    }
    child = {**without_renamed(inherited), "TALLY_TELEMETRY_HOST": "127.0.0.1"}
    assert child == {"TALLY_TOPIC": "events", "TALLY_TELEMETRY_HOST": "127.0.0.1"}
    settings = load_settings({}, child)  # no warning (filterwarnings=error), no refusal
    assert (settings.telemetry_host, settings.topic) == ("127.0.0.1", ("events",))
    with pytest.warns(SettingDeprecationWarning), pytest.raises(ConfigError):
        load_settings({}, {**inherited, "TALLY_TELEMETRY_HOST": "127.0.0.1"})


def test_the_image_sets_no_telemetry_name_and_its_health_check_reads_either() -> None:
    """A deployment still setting TALLY_METRICS_PORT must not meet another value
    baked into the image (every command would refuse to start)."""
    dockerfile = (Path(__file__).parents[2] / "deploy" / "Dockerfile").read_text()
    env_lines = [line for line in dockerfile.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in env_lines if re.search(r"TALLY_(TELEMETRY|METRICS)_\w+=", line)]
    health = next(line for line in env_lines if "healthz" in line)
    assert "TALLY_TELEMETRY_PORT" in health
    assert "TALLY_METRICS_PORT" in health
