"""Lose nothing when README.md is split into docs/: every non-blank, non-heading
line of an old README must still be found in README.md or docs/*.md, verbatim or
in a moved paragraph (whitespace and line breaks aside, a Markdown link
`[Name](file.md#anchor)` read as the quoted "Name" it replaced).

    git show main:README.md > /tmp/old.md && .venv/bin/python scripts/docs_moved_check.py /tmp/old.md

Prints each line not found and exits 1 if there is one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")


def normalise(text: str) -> str:
    text = LINK.sub(lambda link: f'"{link[1]}"', text)
    return " ".join(text.split())


def missing_lines(old_readme: str, new_texts: list[str]) -> list[str]:
    corpus = normalise("\n".join(new_texts))
    missing = []
    for line in old_readme.splitlines():
        if not line.strip() or re.match(r"#{1,6} ", line):
            continue
        if normalise(line) not in corpus:
            missing.append(line)
    return missing


def main() -> int:
    old = Path(sys.argv[1]).read_text()
    new = [(ROOT / "README.md").read_text(), *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))]
    missing = missing_lines(old, new)
    for line in missing:
        print(line)
    print(f"{len(missing)} of the old README's lines not found", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
