"""Reading a webhook body as JSON before anything is authenticated.

The body must be parsed to find the repository whose secret checks its
signature, so the parser meets whatever anyone sends. Python's json recurses
once per level of nesting: 100,000 `[` raise RecursionError, and how deep it
can go depends on the interpreter's recursion limit and the thread's stack.
So the nesting is measured first, without recursion, and a body deeper than
MAX_DEPTH never reaches json.loads. GitHub's payloads nest 4 levels deep.

The number of arrays and objects is capped too: each costs about 60 bytes of
Python objects for 2 bytes of body, so 25 MB of `[]` would take 800 MB of memory;
a push of 2,048 commits (the most GitHub sends) has about 12,300.
"""

from __future__ import annotations

import json
import re

MAX_DEPTH = 64
MAX_CONTAINERS = 100_000
# Brackets in all, strings included: bounds the work of the scan below.
MAX_BRACKETS = 10 * MAX_CONTAINERS

_KEPT = bytes.maketrans(b"{}", b"[]")
_NOT_QUOTE_OR_BRACKET = bytes(b for b in range(256) if b not in b'"[]{}')
_STRING = re.compile(rb'"[^"]*"')


class PayloadError(ValueError):
    pass


def brackets_close_within(body: bytes, depth: int, containers: int) -> bool:
    """True if every array and object of `body` is closed within `depth` levels
    and there are at most `containers` of them. Exact for valid JSON; for other
    bodies True or False as may be, and json.loads then says what is wrong
    (before it fails it reads a valid prefix, where this scan agrees with it).

    Every step but one is a C loop over bytes, so 25 MB take tens of ms:
    1. escaped backslashes, then escaped quotes, are dropped: every quote left
       opens or closes a string;
    2. every byte but quotes and brackets is dropped, `{}` read as `[]`;
    3. `""` is dropped: an empty string, or two strings with nothing between
       them, which does not change what is outside strings;
    4. the strings left, each holding a bracket, are dropped (a regex, at most
       one match per bracket: MAX_BRACKETS bounds it);
    5. each pass drops the innermost pairs (`[]`): a document of depth d is
       empty after d passes.
    """
    reduced = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    reduced = reduced.translate(_KEPT, _NOT_QUOTE_OR_BRACKET).replace(b'""', b"")
    if len(reduced) - reduced.count(b'"') > MAX_BRACKETS:
        return False
    brackets = _STRING.sub(b"", reduced)
    if len(brackets) > 2 * containers:
        return False
    for _ in range(depth):
        if not brackets:
            return True
        inner_removed = brackets.replace(b"[]", b"")
        if len(inner_removed) == len(brackets):
            return False  # unbalanced, or a string never closed
        brackets = inner_removed
    return not brackets


def load_object(body: bytes) -> dict:
    """The body as a JSON object, or PayloadError saying why not."""
    if not brackets_close_within(body, MAX_DEPTH, MAX_CONTAINERS):
        raise PayloadError(
            f"the body is not JSON, or nests deeper than {MAX_DEPTH} levels,"
            f" or holds more than {MAX_CONTAINERS} arrays and objects"
        )
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise PayloadError("the body is not JSON: set the webhook's content type to application/json") from None
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    return payload
