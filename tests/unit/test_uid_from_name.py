"""Derived uids after the issue-14 review: a slug that drops a symbol or a
letter of another script ends with a hash of the name, so names that differ
only there get different uids; names already slugs keep them exactly."""

from __future__ import annotations

import hashlib
import re

import pytest

from tally.contracts.metric import UID_PATTERN, uid_from_name


def digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("Revenue (€)", "Revenue ($)"),
        ("Revenue (€)", "Revenue"),
        ("Calls & texts", "Calls texts"),
        ("Growth %", "Growth"),
        ("Umsatz 日本", "Umsatz 中国"),
        ("a+b", "a-b"),
    ],
)
def test_names_that_differ_only_in_symbols_get_different_uids(one: str, other: str) -> None:
    assert uid_from_name(one) != uid_from_name(other)
    for name in (one, other):
        assert re.match(UID_PATTERN, uid_from_name(name))
        assert uid_from_name(name) == uid_from_name(name)  # stable


@pytest.mark.parametrize(
    "name", ["total_length_of_sent_messages", "daily_active_users", "a", "m_2024_arr", "x" * 128]
)
def test_a_name_that_is_already_a_slug_keeps_it_exactly(name: str) -> None:
    assert uid_from_name(name) == name


def test_a_lossy_slug_ends_with_a_hash_of_the_name_within_128_characters() -> None:
    assert uid_from_name("Revenue (€)") == "revenue_" + digest("Revenue (€)")
    long = "x" * 200 + "€"
    assert uid_from_name(long) == "x" * 119 + "_" + digest(long)
    assert len(uid_from_name(long)) == 128
