"""Property paths: a plain name, or a small JSONPath subset (README, "Paths").

- A text that does not start with `$.` or `$[` is one top-level key, taken
  literally (`$distinct_id`, `$os` and `$` are names, as analytics SDKs send).
- `$` followed by 1-32 segments: `.name` (`[A-Za-z_][A-Za-z0-9_-]*`),
  `['any key']` (with `\\'` and `\\\\` the only escapes) or `[N]` (an index,
  no leading zeros, at most 1,000,000). Nothing else: no wildcards, no `..`,
  no filter expressions, no slices, no whitespace.

A path is its segments: `$.a`, `$['a']` and `a` are the same path. The core
resolves them when it decodes an event (native/src/event.rs).
"""

from __future__ import annotations

import re

Segment = str | int
MAX_SEGMENTS = 32
MAX_INDEX = 1_000_000
MAX_PLAIN_LENGTH = 256

_NAME = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)")
_INDEX = re.compile(r"\[(0|[1-9][0-9]*)\]")


class PathError(ValueError):
    """Why a text is not a supported path (the message names the reason)."""


def _reason(rest: str) -> str:
    if rest.startswith(".."):
        return "recursive descent (..) is not supported"
    if rest.startswith(("[*]", ".*")) or rest.startswith("[*"):
        return "wildcards are not supported"
    if rest.startswith("[?"):
        return "filter expressions are not supported"
    if re.match(r"\[-", rest):
        return "negative indexes are not supported"
    if re.match(r"\[[0-9]*:", rest):
        return "slices are not supported"
    if rest.startswith('["'):
        return "keys in brackets take single quotes: ['key']"
    if rest[:1].isspace():
        return "whitespace is not allowed in a path"
    return f"unexpected {rest[:16]!r}: segments are .name, ['key'] or [index]"


def _quoted(text: str, at: int) -> tuple[str, int]:
    """The key of `['...']` starting at `at` (after the quote), and the end."""
    key = []
    i = at
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 < len(text) and text[i + 1] in "'\\":
                key.append(text[i + 1])
                i += 2
                continue
            raise PathError("in ['key'] only \\' and \\\\ are escapes")
        if c == "'":
            if text[i + 1 : i + 2] != "]":
                raise PathError("['key'] must end with ']' after the quote")
            return "".join(key), i + 2
        key.append(c)
        i += 1
    raise PathError("['key'] is not closed")


def parse_path(text: str) -> tuple[Segment, ...]:
    """The segments of a property path or plain name; PathError if unsupported."""
    if not text:
        raise PathError("must not be empty")
    if not text.startswith(("$.", "$[")):
        if len(text) > MAX_PLAIN_LENGTH:
            raise PathError(f"a property name has at most {MAX_PLAIN_LENGTH} characters")
        return (text,)
    segments: list[Segment] = []
    i = 1
    while i < len(text):
        rest = text[i:]
        if (found := _NAME.match(rest)) is not None and not rest.startswith(".."):
            segments.append(found.group(1))
            i += found.end()
        elif rest.startswith("['"):
            key, i = _quoted(text, i + 2)
            segments.append(key)
        elif (found := _INDEX.match(rest)) is not None:
            index = int(found.group(1))
            if index > MAX_INDEX:
                raise PathError(f"an index is at most {MAX_INDEX:,}")
            segments.append(index)
            i += found.end()
        else:
            raise PathError(_reason(rest))
        if len(segments) > MAX_SEGMENTS:
            raise PathError(f"a path has at most {MAX_SEGMENTS} segments")
    return tuple(segments)
