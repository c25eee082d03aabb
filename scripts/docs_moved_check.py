"""Lose nothing when README.md is split into docs/: every non-blank, non-heading
line of an old README must still be found in README.md or docs/*.md, verbatim or
in a moved paragraph (whitespace and line breaks aside, a Markdown link
`[Name](file.md#anchor)` read as the quoted "Name" it replaced).

    git show main:README.md > /tmp/old.md && .venv/bin/python scripts/docs_moved_check.py /tmp/old.md

Prints the lines found only once references are read as links, then each line
not found, and exits 1 if there is one."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")


def normalise(text: str) -> str:
    text = LINK.sub(lambda link: f'"{link[1]}"', text)
    return " ".join(text.split())


def loosely(text: str) -> str:
    """The words alone: a reference written `docs/x.md, "Section"` or (README, "Section")
    reads the same as the link [x.md, "Section"](x.md#section) that replaced it."""
    text = LINK.sub(lambda link: link[1], text)
    text = re.sub(r"\bdocs/|\bREADME(?:'s)?,? ?|\bthis README's\b|[`\"()\[\]]", "", text)
    return " ".join(text.split())


def missing_lines(old_readme: str, new_texts: list[str]) -> tuple[list[str], list[str]]:
    """(lines found only once references are read as links, lines not found at all)."""
    corpus = normalise("\n".join(new_texts))
    loose_corpus = loosely("\n".join(new_texts))
    relinked, missing = [], []
    for line in old_readme.splitlines():
        if not line.strip() or re.match(r"#{1,6} ", line):
            continue
        if normalise(line) in corpus:
            continue
        (relinked if loosely(line) in loose_corpus else missing).append(line)
    return relinked, missing


def main() -> int:
    old = Path(sys.argv[1]).read_text()
    new = [(ROOT / "README.md").read_text(), *(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))]
    relinked, missing = missing_lines(old, new)
    print(f"{len(relinked)} lines found once their references are read as links:")
    for line in relinked:
        print(f"  {line.strip()}")
    print(f"{len(missing)} of the old README's lines not found:")
    for line in missing:
        print(f"  {line.strip()}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
