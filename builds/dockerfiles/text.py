"""A Dockerfile's text as the daemon's BuildKit reads it: lines, directives, instructions.

Ported from the BuildKit that Docker 20.10.24 vendors (moby v20.10.24 vendor.conf:
github.com/moby/buildkit eeb7b65ab7d6, "v0.8.4-0.20221020190723"), files under
vendor/github.com/moby/buildkit/frontend/dockerfile/:

- builder/build.go, Build(): the built-in frontend reads the Dockerfile's bytes and
  calls dockerfile2llb.DetectSyntax on them *before* parsing; a `syntax` directive
  found there forwards the whole build to that frontend image (`forwardGateway`).
- dockerfile2llb/directives.go, ParseDirectives(): that reading of directives.
- parser/parser.go, Parse(), and parser/split_command.go: the instructions.

Why a port and not Python's own reading (issue 22): `str.splitlines()` splits on
\\r, \\x0b, \\x0c, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029, Go's scanner on \\n only;
Python's `\\s` and `str.isspace()` know Unicode spaces, Go regexp's `\\s` does not.
Every difference is a line the farm and BuildKit read differently.

Go rules kept here (each cited where it is used):
- bufio.Scanner with ScanLines: split on b"\\n" only, one trailing b"\\r" of each line
  dropped, no empty last line after a final b"\\n"; a line of 64 KiB or more
  (bufio.MaxScanTokenSize, the b"\\n" included) ends the scan with ErrTooLong.
- Go regexp: `\\s` is [\\t\\n\\f\\r ] (ASCII, not \\v), `.` is anything but \\n, `$`
  without (?m) the end of the text; a byte that is not valid UTF-8 is U+FFFD, which
  neither `\\s` nor [a-zA-Z] matches. Bytes regexes below give the same matches.
- unicode.IsSpace (the parser's left trim, strings.TrimSpace): ASCII \\t\\n\\v\\f\\r and
  space, U+0085, U+00A0 and Unicode's White_Space; not \\x1c-\\x1f, which Python's
  isspace() counts.
- The byte-order mark: DetectSyntax keeps it (so a BOM before `# syntax=` hides the
  directive from BuildKit too); Parse strips it from the first line only.

Text in (str or bytes): str is encoded as UTF-8 (lone surrogates passed through),
which is how the farm sends it; bytes are read as they are. No Django here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# bufio.MaxScanTokenSize (Go src/bufio/scan.go): the scanner's buffer never grows
# past it, and a line that does not fit with its "\n" stops the scan.
MAX_LINE = 64 * 1024

# dockerfile2llb/directives.go and parser/parser.go both:
#   regexp.MustCompile(`^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`)
# with Go's \s = [\t\n\f\r ] and `$` the end of the text (a line has no "\n").
_GO_S = rb"[\t\n\f\r ]"
_DIRECTIVE = re.compile(
    rb"#" + _GO_S + rb"*([a-zA-Z][a-zA-Z0-9]*)" + _GO_S + rb"*=" + _GO_S + rb"*(.+?)" + _GO_S + rb"*\Z"
)
# parser.go reWhitespace = `[\t\v\f\r ]+`: what separates an instruction's keyword from its arguments.
_KEYWORD_SEPARATOR = re.compile(rb"[\t\v\f\r ]+")
# unicode.IsSpace's runes, UTF-8 encoded: \t \n \v \f \r space U+0085 U+00A0 U+1680
# U+2000-U+200A U+2028 U+2029 U+202F U+205F U+3000 (Go src/unicode/graphic.go, tables.go
# White_Space). A byte that does not start one of these encodings is no space to Go
# (an invalid one decodes to U+FFFD).
_GO_SPACE = (
    rb"(?:[\t\n\x0b\x0c\r ]|\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80)"
)
_LEADING_SPACE = re.compile(rb"\A" + _GO_SPACE + rb"*")
_TRAILING_SPACE = re.compile(_GO_SPACE + rb"*\Z")
_UTF8_BOM = b"\xef\xbb\xbf"
# parser.go validDirectives: the only keys Parse takes as directives.
_PARSER_DIRECTIVES = ("escape", "syntax")
DEFAULT_ESCAPE = "\\"


class DockerfileError(ValueError):
    """BuildKit's parser refuses this text; str() says why, in its words."""


@dataclass(frozen=True)
class Instruction:
    """One instruction as parser.Parse splits it.

    `keyword` is its first word upper-cased (as Go lower-cases it, then upper-cased:
    "FROM", "RUN", or whatever unknown word stood there); `first_line` and
    `last_line` are 1-based physical line numbers (Node.StartLine, Node.EndLine),
    the last counting the comment and blank lines inside a continuation;
    `line` is the logical line Parse builds (continuations joined, escape
    characters at line ends removed); `flags` the `--name=value` words before the
    arguments (split_command.go extractBuilderFlags); `args` the rest. `continues`:
    the text ended while this instruction still expected a continuation line."""

    keyword: str
    first_line: int
    last_line: int
    line: str
    flags: tuple[str, ...]
    args: str
    continues: bool = False


def _as_bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")


def _as_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def scan_lines(text: str | bytes) -> tuple[list[bytes], bool]:
    """The lines Go's bufio.Scanner(ScanLines) yields, and whether it stopped on a
    line too long (ErrTooLong) rather than at the end of the text.

    src/bufio/scan.go: ScanLines cuts at each "\\n" and drops one "\\r" before it
    (dropCR); at EOF a non-empty rest is the last line. Scan() fails with
    ErrTooLong once its buffer, at most MaxScanTokenSize bytes, is full without a
    "\\n" in it, so a line (its "\\r" included) must be shorter than MAX_LINE; a
    last line without "\\n" likewise (the buffer fills before EOF is seen)."""
    data = _as_bytes(text)
    lines: list[bytes] = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        stop = len(data) if end < 0 else end
        if stop - start >= MAX_LINE:
            return lines, True
        line = data[start:stop]
        lines.append(line[:-1] if line.endswith(b"\r") else line)
        start = stop + 1
    return lines, False


def directives(text: str | bytes) -> dict[str, str]:
    """The directives as dockerfile2llb.DetectSyntax sees them (ParseDirectives):
    key lower-cased -> value, the last of a key winning (a map assignment).

    Every leading line that matches the directive regex counts, whatever its key
    (unlike Parse, which stops at a key it does not know); the first line that
    does not match ends them, a blank line too. No BOM strip and no left trim
    here: ParseDirectives matches s.Text() as it is. A scan stopped by a line too
    long keeps what was read before it."""
    found: dict[str, str] = {}
    lines, _ = scan_lines(text)
    for line in lines:
        match = _DIRECTIVE.match(line)
        if not match:
            break
        found[match[1].decode("ascii").lower()] = _as_text(match[2])
    return found


def _trim_left(data: bytes) -> bytes:
    """bytes.TrimLeftFunc(data, unicode.IsSpace) (parser.go trimWhitespace)."""
    return data[_LEADING_SPACE.match(data).end() :]


def _trim_space(data: bytes) -> bytes:
    """strings.TrimSpace: unicode.IsSpace off both ends."""
    data = _trim_left(data)
    return data[: _TRAILING_SPACE.search(data).start()]


def _is_comment(line: bytes) -> bool:
    """parser.go isComment: reComment `^#.*$` on the left-trimmed line."""
    return _trim_left(line).startswith(b"#")


def _go_lower(word: bytes) -> str:
    """strings.ToLower: unicode.ToLower rune by rune, the simple case mapping
    (U+0130 -> "i", where Python's full mapping gives two characters); an
    invalid byte stays as it is (as U+FFFD would, for comparing keywords)."""
    return "".join(c.lower()[:1] or c for c in _as_text(word))


class _Directives:
    """parser.go `directives`: the escape token and the end of directives, as
    possibleParserDirective and setEscapeToken keep them."""

    def __init__(self) -> None:
        self.done = False
        self.seen: set[str] = set()
        self.set_escape(DEFAULT_ESCAPE)

    def set_escape(self, token: str) -> None:
        if token not in ("`", "\\"):
            raise DockerfileError(f"invalid escape token '{token}' does not match ` or \\")
        self.escape = token
        # setEscapeToken: `([^\` + s + `])\` + s + `[ \t]*$|^\` + s + `[ \t]*$`. Go has
        # no look-behind, so an escaped escape token before the end still continues.
        e = re.escape(token.encode())
        self.continuation = re.compile(rb"([^" + e + rb"])" + e + rb"[ \t]*\Z|\A" + e + rb"[ \t]*\Z")

    def possible(self, line: bytes) -> None:
        """possibleParserDirective: only `escape` and `syntax`, once each; the first
        line that is no directive (or another key) ends them."""
        if self.done:
            return
        match = _DIRECTIVE.match(line)
        key = match[1].decode("ascii").lower() if match else ""
        if key not in _PARSER_DIRECTIVES:
            self.done = True
            return
        if key in self.seen:
            raise DockerfileError(f"only one {key} parser directive can be used")
        self.seen.add(key)
        if key == "escape":
            self.set_escape(_as_text(match[2]))

    def trim_continuation(self, line: bytes) -> tuple[bytes, bool]:
        """trimContinuationCharacter: the line without its trailing escape token
        (ReplaceAllString with "$1"), and whether the instruction ends here."""
        if self.continuation.search(line):
            return self.continuation.sub(lambda m: m[1] or b"", line), False
        return line, True


def _process(d: _Directives, token: bytes, strip_left: bool) -> bytes:
    """processLine: the directive is looked for on the (left-trimmed) line, and a
    comment becomes empty (trimComments, reComment `^#.*$`)."""
    if strip_left:
        token = _trim_left(token)
    d.possible(token)
    return b"" if token.startswith(b"#") else token


def _split_command(line: bytes) -> tuple[str, tuple[str, ...], str]:
    """split_command.go splitCommand: keyword (Go-lower-cased), flags, args."""
    parts = _KEYWORD_SEPARATOR.split(_trim_space(line), maxsplit=1)
    keyword = _go_lower(parts[0])
    if len(parts) < 2:
        return keyword, (), ""
    args, flags = _builder_flags(parts[1])
    return keyword, flags, _as_text(_trim_space(args))


# extractBuilderFlags reads the line byte by byte as runes (`rune(line[pos])`), so a
# byte 0x85 or 0xA0 is a space to its unicode.IsSpace.
_FLAG_SPACE = frozenset(b"\t\n\x0b\x0c\r \x85\xa0")


def _builder_flags(line: bytes) -> tuple[bytes, tuple[str, ...]]:
    """split_command.go extractBuilderFlags: leading `--word` words (quotes and
    backslashes as there), the rest of the line. A flag's characters are the
    line's bytes as runes (Latin-1), as Go's `word += string(ch)` builds them."""
    words: list[str] = []
    word, quote, blank_ok, phase = "", 0, False, "spaces"
    pos = 0
    while pos <= len(line):
        ch = line[pos] if pos < len(line) else None
        if phase == "spaces":
            if ch is None:
                break
            if ch in _FLAG_SPACE:
                pos += 1
                continue
            if ch != ord("-") or pos + 1 == len(line) or line[pos + 1] != ord("-"):
                return line[pos:], tuple(words)
            phase = "word"
        if ch is None:  # end of input in a word or a quote
            if word != "--" and (blank_ok or word):
                words.append(word)
            break
        if phase == "word":
            if ch in _FLAG_SPACE:
                phase = "spaces"
                if word == "--":
                    return line[pos:], tuple(words)
                if blank_ok or word:
                    words.append(word)
                word, blank_ok = "", False
            elif ch in b"'\"":
                quote, blank_ok, phase = ch, True, "quote"
            elif ch == ord("\\") and pos + 1 == len(line):
                pass  # just skip \ at end
            else:
                if ch == ord("\\"):
                    pos += 1
                    ch = line[pos]
                word += chr(ch)
        else:  # in a quote
            if ch == quote or (ch == ord("\\") and pos + 1 == len(line)):  # a \ at the end is skipped
                phase = "word"
            else:
                if ch == ord("\\"):
                    pos += 1
                    ch = line[pos]
                word += chr(ch)
        pos += 1
    return b"", tuple(words)


def instructions(text: str | bytes) -> list[Instruction]:
    """The instructions as parser.Parse splits them. Raises DockerfileError where
    Parse fails before any instruction's own arguments are looked at: a line too
    long, a repeated or invalid parser directive, no instruction at all."""
    lines, too_long = scan_lines(text)
    if too_long:
        # handleScannerError: bufio.ErrTooLong
        raise DockerfileError(f"dockerfile line greater than max allowed size of {MAX_LINE - 1}")
    d = _Directives()
    found: list[Instruction] = []
    number = 0  # Parse's currentLine: the physical lines read so far
    while number < len(lines):
        raw = lines[number]
        if number == 0:
            raw = raw.removeprefix(_UTF8_BOM)  # "First line, strip the byte-order-marker if present"
        token = _process(d, raw, strip_left=True)
        number += 1
        first = number
        logical, ended = d.trim_continuation(token)
        if ended and not logical:
            continue
        while not ended and number < len(lines):
            raw = lines[number]
            token = _process(d, raw, strip_left=False)
            number += 1
            if _is_comment(raw):  # "original line was a comment (processLine strips comments)"
                continue
            if not _trim_left(token):  # isEmptyContinuationLine
                continue
            more, ended = d.trim_continuation(token)
            logical += more
        keyword, flags, args = _split_command(logical)
        found.append(
            Instruction(
                keyword=keyword.upper(),
                first_line=first,
                last_line=number,
                line=_as_text(logical),
                flags=flags,
                args=args,
                continues=not ended,
            )
        )
    if not found:
        raise DockerfileError("file with no instructions")
    return found


def escape_token(text: str | bytes) -> str:
    """The escape character Parse uses for this text (`\\` unless a valid
    `# escape=` directive says "`")."""
    d = _Directives()
    lines, _ = scan_lines(text)
    for number, raw in enumerate(lines):
        if d.done:
            break
        _process(d, raw.removeprefix(_UTF8_BOM) if number == 0 else raw, strip_left=True)
    return d.escape


def insert_after_each_from(text: str | bytes, line: str) -> str | bytes:
    """`text` with `line` as an instruction of its own right after each FROM
    instruction (after its last continuation line), everything else untouched:
    directives stay first, since a FROM is never before them, and the line is
    checked to be one instruction under the text's escape character.

    A FROM whose continuation runs to the end of the text is left as it is: no
    step follows it in its stage, and a line put after it would join it. Raises
    DockerfileError where BuildKit's parser refuses the text, ValueError for a
    `line` that is not one instruction. Returns str for str, bytes for bytes."""
    if "\n" in line or "\r" in line:
        raise ValueError("the inserted line must be one line")
    escape = escape_token(text)
    data = _as_bytes(text)
    added = _as_bytes(line)
    probe = f"# escape={escape}\n".encode() + added + b"\n"
    parsed = instructions(probe)
    if len(parsed) != 1 or parsed[0].continues or parsed[0].keyword == "FROM":
        raise ValueError(f"{line!r} is not one instruction (other than FROM) under escape character {escape!r}")
    before = instructions(data)
    ends = {i.last_line for i in before if i.keyword == "FROM" and not i.continues}
    physical = data.split(b"\n")  # the same cuts as scan_lines; the last piece has no "\n"
    out: list[bytes] = []
    for number, piece in enumerate(physical, start=1):
        if number in ends:
            newline = b"\r\n" if piece.endswith(b"\r") else b"\n"
            out.append(piece + b"\n" + added + (newline[:-1] if number < len(physical) else b""))
        else:
            out.append(piece)
    result = b"\n".join(out)
    expected: list[str] = []
    for instruction in before:
        expected.append(instruction.line)
        if instruction.keyword == "FROM" and instruction.last_line in ends:
            expected.append(parsed[0].line)
    if [i.line for i in instructions(result)] != expected:
        raise ValueError("inserting the line changed how the Dockerfile splits into instructions")
    return result if isinstance(text, bytes) else result.decode("utf-8", "surrogatepass")
