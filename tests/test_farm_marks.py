"""Every test under tests/farm/ carries the `farm` mark, so `make test`'s
`-m "not farm"` pass starts no farm (tests/farm/conftest.py marks them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def collect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_no_test_under_tests_farm_is_left_for_the_not_farm_pass():
    result = collect("-m", "not farm", "tests/farm")
    assert result.returncode == 5, result.stdout + result.stderr  # 5: nothing selected
    assert "no tests collected" in result.stdout and "deselected" in result.stdout, result.stdout


def test_tests_outside_tests_farm_are_not_marked_farm():
    result = collect("-m", "farm", "tests/test_farm_marks.py", "tests/generator_site/test_settings.py")
    assert result.returncode == 5, result.stdout + result.stderr
