"""Token entries, hashing and scopes (no services)."""

from __future__ import annotations

import hashlib
import logging

import pytest

from tally.api.auth import Authenticator, Scope, new_token, parse_entries, token_entry
from tally.config import ConfigError
from tally.telemetry.logs import _Formatter


def test_an_entry_holds_the_hash_never_the_token() -> None:
    token = new_token()
    entry = token_entry("billing", "read", token)
    assert entry == f"billing:read:{hashlib.sha256(token.encode()).hexdigest()}"
    assert token not in entry


def test_new_tokens_are_long_and_different() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 40 and t.startswith("tly_") for t in tokens)


def test_the_authenticator_finds_the_principal_and_scope() -> None:
    config = ",".join(
        [token_entry("reader", "read", "r-token"), token_entry("ops", "admin", "a-token")]
    )
    authenticator = Authenticator(f" {config} ,")
    assert len(authenticator) == 2
    reader = authenticator.identify("r-token")
    admin = authenticator.identify("a-token")
    assert reader is not None
    assert (reader.name, reader.scope) == ("reader", Scope.READ)
    assert admin is not None
    assert (admin.name, admin.scope) == ("ops", Scope.ADMIN)
    assert authenticator.identify("r-token ") is None
    assert authenticator.identify("") is None
    assert Authenticator("").identify("r-token") is None


def test_scopes() -> None:
    assert Scope.ADMIN.allows(Scope.READ)
    assert Scope.ADMIN.allows(Scope.ADMIN)
    assert Scope.READ.allows(Scope.READ)
    assert not Scope.READ.allows(Scope.ADMIN)


def test_ingest_only_sends_events_and_admin_includes_it() -> None:
    assert Scope.ADMIN.allows(Scope.INGEST)
    assert Scope.INGEST.allows(Scope.INGEST)
    assert not Scope.INGEST.allows(Scope.READ)
    assert not Scope.INGEST.allows(Scope.ADMIN)
    assert not Scope.READ.allows(Scope.INGEST)
    entry = token_entry("meter", "ingest", "i-token")
    found = Authenticator(entry).identify("i-token")
    assert found is not None
    assert found.scope is Scope.INGEST


def test_upper_case_hex_is_accepted() -> None:
    digest = hashlib.sha256(b"t").hexdigest().upper()
    assert Authenticator(f"a:read:{digest}").identify("t") is not None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("just-a-token", "NAME:SCOPE:SHA256HEX"),
        ("a:write:" + "0" * 64, "scope must be read, ingest or admin"),
        ("a:read:tly_plaintext_token", "never the token"),
        ("a b:read:" + "0" * 64, "bad name"),
        (f"a:read:{'0' * 64},a:admin:{'1' * 64}", "appears twice"),
    ],
)
def test_bad_entries_stop_the_start_naming_the_setting(config: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_entries(config)
    assert "TALLY_API_TOKENS" in str(caught.value)


def test_token_entry_refuses_bad_input() -> None:
    with pytest.raises(ConfigError):
        token_entry("a:b", "read", "t")
    with pytest.raises(ConfigError):
        token_entry("a", "root", "t")
    with pytest.raises(ConfigError):
        token_entry("a", "read", " t")


def test_passwords_in_urls_are_redacted_in_log_lines() -> None:
    record = logging.LogRecord(
        "t", logging.WARNING, __file__, 1, "database unreachable", None, None
    )
    record.fields = {  # type: ignore[attr-defined]
        "reason": "cannot reach postgresql://tally:s3cret@db:5432/tally (refused)",
        "api_token": "abc",
        "kind": "ConnectionRefusedError",
    }
    line = _Formatter(as_json=False).format(record)
    assert "s3cret" not in line
    assert "abc" not in line
    assert "postgresql://tally:***@db:5432/tally" in line
    assert "kind=ConnectionRefusedError" in line
