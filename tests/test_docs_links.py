"""Every relative link of README.md and docs/*.md leads somewhere: the file exists
and, for `file.md#anchor` or `#anchor`, that file has a heading whose GitHub slug
is the anchor (or an explicit `<a id="anchor">`). And every file of the repository
a page names (`builds/jobs/dispatch.py`) is there, so a move shows where the docs lag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[(?:[^\]\n]|\][^(\n])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1", re.DOTALL)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
# A file of this repository named in prose or code: `builds/jobs/dispatch.py`, scripts/farm.py.
REPOSITORY_FILE = re.compile(
    r"(?<![\w/.-])((?:audit|bench|builds|conf|docs|generator_site|notifications|pool|requirements|scripts|teams|tests)"
    r"/[\w/.-]*\.(?:py|sh|json|yml|md|txt))(?![\w/-])"
)


def prose(markdown: str) -> str:
    """The text outside fenced blocks and code spans: a link inside them is code."""
    return CODE_SPAN.sub("", FENCE.sub("", markdown))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, punctuation dropped
    (letters, digits, `_`, `-` and spaces kept), each space a `-`."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"<[^>]+>", "", text).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    found = set(EXPLICIT_ANCHOR.findall(markdown))
    for _, heading in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(root) if file.is_relative_to(root) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(root)}")
    return broken


def missing_files(page: Path, root: Path = ROOT) -> list[str]:
    """Files of the repository the page names that are not there (moved or gone)."""
    return sorted({name for name in REPOSITORY_FILE.findall(page.read_text()) if not (root / name).exists()})


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_link_leads_somewhere(page: Path):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_file_a_page_names_exists(page: Path):
    assert missing_files(page) == []


def test_slugs_follow_githubs_rules():
    assert slug("Who may do what") == "who-may-do-what"
    assert slug("The registry: the farm is its token server") == "the-registry-the-farm-is-its-token-server"
    assert slug("How the farm reads a Dockerfile, and why it fails closed") == (
        "how-the-farm-reads-a-dockerfile-and-why-it-fails-closed"
    )
    assert slug("`/b1` and `conf/pool.json`") == "b1-and-confpooljson"
    assert slug("Fair share: one team's 200 builds (issue 15)") == "fair-share-one-teams-200-builds-issue-15"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_a_broken_link_is_found(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "teams.md").write_text("# Teams\n\n## Fair shares\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/teams.md#fair-shares) [gone](docs/nope.md) [no anchor](docs/teams.md#audit-log) "
        "[here](#teams) `[code](docs/x.md)` [web](https://example.com/x.md)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "docs/nope.md: no file docs/nope.md",
        "docs/teams.md#audit-log: no heading #audit-log in docs/teams.md",
        "#teams: no heading #teams in README.md",
    ]


def test_a_file_that_moved_is_found(tmp_path: Path):
    (tmp_path / "builds" / "jobs").mkdir(parents=True)
    (tmp_path / "builds" / "jobs" / "dispatch.py").write_text("")
    page = tmp_path / "README.md"
    page.write_text("`builds/jobs/dispatch.py`, builds/gone.py, `/api/v1/builds/ID/log/`, shared/docs/machines.md\n")
    assert missing_files(page, root=tmp_path) == ["builds/gone.py"]
