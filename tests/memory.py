"""How much memory a piece of code took at its peak, in this test process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
MiB = 1024 * 1024


def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/self/status")


def peak_growth(action: Callable[[], T]) -> tuple[T, int]:
    """`action()`'s answer, and how far the process's resident memory rose above
    where it was before, at the highest (VmHWM, reset first through clear_refs:
    a peak between samples is not missed)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_bytes("VmRSS")
    result = action()
    return result, _status_bytes("VmHWM") - before
