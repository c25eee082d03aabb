"""builds/dockerfiles/text.py: a Dockerfile read as Docker 20.10's BuildKit reads it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builds.dockerfiles.text import (
    MAX_LINE,
    DockerfileError,
    directives,
    escape_token,
    insert_after_each_from,
    instructions,
    scan_lines,
)


def test_lines_split_on_newline_only_and_drop_one_carriage_return():
    assert scan_lines("a\r\nb\rc\x1cd\x0be\x85f\u2028g\r\r\nh") == (
        [b"a", b"b\rc\x1cd\x0be\xc2\x85f\xe2\x80\xa8g\r", b"h"],
        False,
    )
    assert scan_lines("a\n") == ([b"a"], False)
    assert scan_lines("a\n\n") == ([b"a", b""], False)
    assert scan_lines("") == ([], False)
    assert scan_lines("last\r") == ([b"last"], False)


def test_a_line_of_64_kib_stops_the_scan():
    fits, too_long = b"x" * (MAX_LINE - 1), b"x" * MAX_LINE
    assert scan_lines(b"a\n" + fits + b"\nb") == ([b"a", fits, b"b"], False)
    assert scan_lines(b"a\n" + fits) == ([b"a", fits], False)  # a last line without "\n" as well
    assert scan_lines(b"a\n" + too_long + b"\nb") == ([b"a"], True)
    assert scan_lines(b"a\n" + too_long) == ([b"a"], True)
    # The carriage return counts: it is in the scanner's buffer before ScanLines drops it.
    assert scan_lines(b"a\n" + fits + b"\r\nb") == ([b"a"], True)


@pytest.mark.parametrize("separator", ["\r", "\x1c", "\x1d", "\x1e", "\x0b", "\x0c", "\x85", "\u2028", "\u2029"])
def test_a_line_break_that_go_does_not_know_keeps_the_next_directive(separator):
    # Issue 22's first bypass: str.splitlines() ended the directives at "x"; Go's scanner did not.
    text = f"# a=b{separator}x\n# syntax=evil/frontend\nFROM busybox\n"
    assert directives(text) == {"a": f"b{separator}x", "syntax": "evil/frontend"}


def test_directives_as_detect_syntax_reads_them():
    assert directives("#syntax = a b \n# Escape=`\nFROM x\n# syntax=late\n") == {"syntax": "a b", "escape": "`"}
    assert directives("# syntax=a\n# SYNTAX=b\n") == {"syntax": "b"}  # a map: the last one wins
    assert directives("# hello\n# syntax=a\n") == {}  # a comment is no directive: they end there
    assert directives("\n# syntax=a\n") == {}
    assert directives(" # syntax=a\n") == {}  # no left trim in ParseDirectives
    assert directives("\ufeff# syntax=a\n") == {}  # nor a BOM strip
    assert directives("#\x0bsyntax=a\n") == {}  # Go's \s has no \v
    assert directives("# syntax=a\x0b\x0c\n") == {"syntax": "a\x0b"}  # \f is \s, \v is not
    assert directives("# syntax=\u00a0a\u00a0\n") == {"syntax": "\u00a0a\u00a0"}  # nor any non-ASCII space
    assert directives("# syntax= \t\n") == {"syntax": "\t"}  # `(.+?)` takes one character
    assert directives("# syntax=\n") == {}
    assert directives(b"# syntax=\xff\xfe\n") == {"syntax": "\udcff\udcfe"}  # bytes kept, not replaced
    assert directives("# 1a=b\n# syntax=a\n") == {}


def test_a_line_too_long_ends_the_directives_where_it_stands():
    assert directives("# syntax=a\n" + "#" * MAX_LINE + "\n# b=c\n") == {"syntax": "a"}
    assert directives("#" * MAX_LINE + "\n# syntax=a\n") == {}


def test_instructions_join_continuations_and_count_physical_lines():
    text = "# escape=\\\n\nFROM busybox \\\n  AS base\n# note\nRUN echo a \\\n# inside\n\n  && echo b\nrun x\r\n"
    found = instructions(text)
    assert [(i.keyword, i.first_line, i.last_line) for i in found] == [("FROM", 3, 4), ("RUN", 6, 9), ("RUN", 10, 10)]
    assert found[0].line == "FROM busybox   AS base"
    assert found[0].args == "busybox   AS base"
    assert found[1].line == "RUN echo a   && echo b"


def test_the_escape_directive_changes_the_continuation_character():
    text = "# escape=`\nFROM mcr/windows\nRUN dir c:\\ `\n  /b\nCOPY a\\ b\n"
    assert escape_token(text) == "`"
    found = instructions(text)
    assert [(i.keyword, i.first_line, i.last_line) for i in found] == [("FROM", 2, 2), ("RUN", 3, 4), ("COPY", 5, 5)]
    assert found[1].line == "RUN dir c:\\   /b"


def test_the_parser_strips_a_bom_and_leading_space_before_its_directives():
    text = "\ufeff  # escape=`\nFROM a `\n b\n"
    assert escape_token(text) == "`"
    assert [(i.keyword, i.line) for i in instructions(text)] == [("FROM", "FROM a  b")]


def test_an_unknown_directive_ends_the_parsers_directives():
    # Parse stops at a key it does not know (DetectSyntax does not: see above).
    text = "# a=b\n# escape=`\nFROM a `\nRUN b\n"
    assert escape_token(text) == "\\"
    assert [i.keyword for i in instructions(text)] == ["FROM", "RUN"]


def test_keywords_are_lower_cased_as_go_does_it():
    found = instructions("from a\nONBUİLD RUN x\nHEALTHCHEC\u212a NONE\nFROM\u00a0a\n")
    # Go's unicode.ToLower maps U+0130 to "i" and the Kelvin sign to "k"; U+00A0 separates nothing.
    assert [i.keyword for i in found] == ["FROM", "ONBUILD", "HEALTHCHECK", "FROM\u00a0A"]


def test_flags_are_split_as_extract_builder_flags_does():
    found = instructions('RUN --mount=type=ssh,id=x --network="none" -- echo a\nRUN echo --mount=type=ssh\n')
    assert found[0].flags == ("--mount=type=ssh,id=x", "--network=none")
    assert found[0].args == "echo a"
    assert found[1].flags == ()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("# escape=`\n# escape=\\\nFROM a\n", "only one escape parser directive"),
        ("# syntax=a\n# syntax=b\nFROM a\n", "only one syntax parser directive"),
        ("# escape=x\nFROM a\n", "invalid escape token"),
        ("# just a comment\n\n", "file with no instructions"),
        ("FROM a\nRUN " + "x" * MAX_LINE + "\n", "greater than max allowed size"),
    ],
)
def test_what_the_parser_refuses(text, reason):
    with pytest.raises(DockerfileError, match=reason):
        instructions(text)


def test_arg_lines_go_after_each_from_and_its_continuation():
    text = "# syntax=docker/dockerfile:1\n# escape=\\\nFROM a AS one \\\n  # note\n  --platform=x\nRUN x\nFROM b\n"
    out = insert_after_each_from(text, "ARG SALT")
    assert out == (
        "# syntax=docker/dockerfile:1\n# escape=\\\nFROM a AS one \\\n  # note\n  --platform=x\nARG SALT\nRUN x\n"
        "FROM b\nARG SALT\n"
    )
    assert directives(out) == directives(text)
    assert [i.keyword for i in instructions(out)] == ["FROM", "ARG", "RUN", "FROM", "ARG"]


def test_insertion_keeps_line_endings_and_a_missing_last_newline():
    assert insert_after_each_from("FROM a\r\nRUN x\r\n", "ARG S") == "FROM a\r\nARG S\r\nRUN x\r\n"
    assert insert_after_each_from("RUN x\nFROM a", "ARG S") == "RUN x\nFROM a\nARG S"
    assert insert_after_each_from(b"FROM a\n", "ARG S") == b"FROM a\nARG S\n"


def test_insertion_under_a_backtick_escape():
    text = "# escape=`\nFROM a `\n  AS b\nRUN dir c:\\\n"
    out = insert_after_each_from(text, "ARG S=c:\\")
    assert out == "# escape=`\nFROM a `\n  AS b\nARG S=c:\\\nRUN dir c:\\\n"
    assert [i.line for i in instructions(out)] == ["FROM a   AS b", "ARG S=c:\\", "RUN dir c:\\"]


def test_a_from_that_runs_to_the_end_of_the_text_is_left_alone():
    assert insert_after_each_from("FROM a\nRUN x\nFROM b \\\n", "ARG S") == "FROM a\nARG S\nRUN x\nFROM b \\\n"


@pytest.mark.parametrize("line", ["ARG S \\", "# ARG S", "", "ARG A\nARG B", "ARG A\rB", "FROM c"])
def test_a_line_that_is_not_one_instruction_is_refused(line):
    with pytest.raises(ValueError):
        insert_after_each_from("FROM a\nRUN x\n", line)


# A property test: directives() against a plain transcription of the Go rules
# (bufio.ScanLines, then the directive regex matched by hand), on Dockerfiles made of
# directive-like lines joined by every line break Unicode or Go knows and by spaces.
GO_REGEXP_SPACE = b"\t\n\f\r "
SEPARATORS = ["\n", "\r\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
SPACES = ["\t", " ", "\u00a0", "\u1680", "\u2003", "\u202f", "\u3000", "\x0b", "\x0c", "\r"]
PIECES = [
    "#",
    "# syntax=registry.example/frontend:1",
    "#syntax = a b ",
    "# escape=`",
    "# a=b",
    "#\tkey\t=\tvalue\t",
    " # syntax=indented",
    "\ufeff# syntax=bom",
    "# SYNTAX=upper",
    "# 1a=b",
    "# k=",
    "# k= ",
    "# comment",
    "FROM busybox",
    "",
    "\\",
]


def _go_directives(data: bytes) -> dict[str, str]:
    """ScanLines: "\\n" cuts, no token after a last "\\n", one "\\r" dropped, a
    line of 64 KiB or more stops it. Then `^#\\s*([a-zA-Z][a-zA-Z0-9]*)\\s*=\\s*(.+?)\\s*$`
    with \\s = [\\t\\n\\f\\r ], by hand; the first line that does not match ends them."""
    found: dict[str, str] = {}
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if len(line) >= 64 * 1024:
            break
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.startswith(b"#"):
            break
        at = 1
        while at < len(line) and line[at] in GO_REGEXP_SPACE:
            at += 1
        start = at
        if at == len(line) or not chr(line[at]).isascii() or not chr(line[at]).isalpha():
            break
        while at < len(line) and chr(line[at]).isascii() and chr(line[at]).isalnum():
            at += 1
        key = line[start:at]
        while at < len(line) and line[at] in GO_REGEXP_SPACE:
            at += 1
        if at == len(line) or line[at] != ord("="):
            break
        rest = line[at + 1 :]
        if not rest:
            break
        # \s* greedy, then (.+?) lazy before \s*$: the rest without its spaces, or
        # (all spaces) its last character.
        value = rest.strip(GO_REGEXP_SPACE) or rest[-1:]
        found[key.decode().lower()] = value.decode("utf-8", "surrogateescape")
    return found


@given(
    parts=st.lists(
        st.tuples(
            st.lists(st.sampled_from(SPACES), max_size=2),
            st.sampled_from(PIECES),
            st.lists(st.sampled_from(SPACES), max_size=2),
            st.sampled_from(SEPARATORS),
        ),
        min_size=1,
        max_size=8,
    ),
    invalid=st.sampled_from([b"", b"\xff", b"\xc2", b"\xe2\x80"]),
)
@settings(max_examples=400, deadline=None)
def test_directives_agree_with_the_go_rules(parts, invalid):
    text = "".join("".join(before) + piece + "".join(after) + sep for before, piece, after, sep in parts)
    assert directives(text) == _go_directives(text.encode())
    data = text.encode().replace(b"=", b"=" + invalid, 1)  # bytes that are no UTF-8 in a value
    assert directives(data) == _go_directives(data)


def test_the_transcription_knows_what_str_splitlines_does_not():
    # The property above can fail: the old reading (str.splitlines, Python's \s) disagrees.
    text = "# a=b\u2028x\n# syntax=s\n"
    old = {}
    for line in text.splitlines():
        match = re.match(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$", line)
        if not match:
            break
        old[match[1].lower()] = match[2]
    assert _go_directives(text.encode()) == directives(text) != old
