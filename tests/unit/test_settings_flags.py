"""Bool settings as flags: a default-off setting is --name, a default-on one --no-name."""

from __future__ import annotations

from tally.cli.main import build_parser
from tally.cli.options import settings_from
from tally.config import flag_name, load_settings


def test_migrate_is_on_by_default_and_turned_off_by_no_migrate() -> None:
    parser = build_parser()
    for command in (["run"], ["api", "serve"]):
        assert settings_from(parser.parse_args(command)).migrate is True
        off = parser.parse_args([*command, "--no-migrate"])
        assert settings_from(off).migrate is False
    assert flag_name("migrate") == "--no-migrate"
    assert flag_name("with_api") == "--with-api"
    assert settings_from(parser.parse_args(["run", "--with-api"])).with_api is True


def test_the_environment_turns_migrate_off_and_a_flag_wins() -> None:
    assert load_settings({}, {"TALLY_MIGRATE": "false"}).migrate is False
    assert load_settings({}, {"TALLY_MIGRATE": "true"}).migrate is True
    assert load_settings({"migrate": False}, {"TALLY_MIGRATE": "true"}).migrate is False


def test_bench_keeps_its_flags_and_takes_ingest_as_an_optional_subcommand() -> None:
    from tally.cli import commands

    parser = build_parser()
    plain = parser.parse_args(["bench", "--events", "5", "--no-peers", "--workload", "live"])
    assert plain.handler is commands.bench
    assert (plain.events, plain.peers, plain.workload, plain.bench_command) == (
        5,
        False,
        "live",
        None,
    )
    ingest = parser.parse_args(["bench", "ingest", "--events", "300", "--connections", "2"])
    assert ingest.handler is commands.bench_ingest
    assert (ingest.events, ingest.connections, ingest.batch) == (300, 2, 100)
    assert ingest.fields == ["kafka_bootstrap", "log_format", "log_level"]
