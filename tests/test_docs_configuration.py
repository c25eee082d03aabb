"""docs/configuration.md names every GENERATOR_* variable the code reads, and none
that it does not: a variable is read where a Python string holds its whole name
(`env_int("GENERATOR_X", ...)`, `os.environ.get("GENERATOR_X")`) or a shell,
compose or Makefile line expands it (`${GENERATOR_X:-...}`)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIPPED = {".git", ".venv", "var", "node_modules", "__pycache__"}
IN_PYTHON = re.compile(r"""["'](GENERATOR_[A-Z0-9_]*[A-Z0-9])["']""")
IN_SHELL = re.compile(r"\$\{?(GENERATOR_[A-Z0-9_]*[A-Z0-9])")
NAME = re.compile(r"GENERATOR_[A-Z0-9_]+")


def code_files() -> list[Path]:
    return [
        path
        for path in ROOT.rglob("*")
        if path.is_file() and not SKIPPED.intersection(path.relative_to(ROOT).parts) and path != Path(__file__)
    ]


def read_by_code(files: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in files:
        if path.suffix == ".py":
            names |= set(IN_PYTHON.findall(path.read_text()))
        elif path.suffix in (".sh", ".yml", ".yaml") or path.name in ("Makefile", "Dockerfile"):
            names |= set(IN_SHELL.findall(path.read_text()))
    return names


def documented(page: str) -> set[str]:
    """Whole names only: `GENERATOR_EMAIL_*` or `GENERATOR_TEAM_<id>` is a family, not a variable."""
    return {name for name in NAME.findall(page) if not name.endswith("_")}


def test_configuration_names_every_variable_the_code_reads_and_no_other():
    code = read_by_code(code_files())
    docs = documented((ROOT / "docs" / "configuration.md").read_text())
    assert len(code) > 100  # the search finds the settings at all
    assert sorted(code - docs) == [], "read by the code, missing from docs/configuration.md"
    assert sorted(docs - code) == [], "in docs/configuration.md, read by no code"


def test_the_search_sees_python_and_shell_reads(tmp_path: Path):
    (tmp_path / "a.py").write_text('x = env_int("GENERATOR_A", 1)\ny = settings.GENERATOR_NOT_AN_ENV\n')
    (tmp_path / "b.sh").write_text('db=${GENERATOR_B:-x}\necho "$GENERATOR_C"\n')
    (tmp_path / "c.txt").write_text('"GENERATOR_D"\n')
    assert read_by_code(sorted(tmp_path.iterdir())) == {"GENERATOR_A", "GENERATOR_B", "GENERATOR_C"}
    assert documented("`GENERATOR_EMAIL_*`, `GENERATOR_TEAM_<id>`, `GENERATOR_E`") == {"GENERATOR_E"}
