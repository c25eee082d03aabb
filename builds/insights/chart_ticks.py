"""The ticks of a chart's value axis (builds/insights/charts.py): round values ("nice
numbers", 1, 2 or 5 times a power of ten apart) in a unit that suits the scale
(ms, s, min, h or d for durations). Each label is written from integers, never
from a rounded float, so no two ticks of an axis can read the same."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

INTERVALS = 5  # at most this many steps from 0 to the top
# A duration axis is drawn in the first unit whose limit its highest value is below
# (name, seconds in one, limit in seconds): at 3 units and more, the steps are whole units.
DURATION_UNITS = (("ms", 1e-3, 1.0), ("s", 1.0, 180.0), ("min", 60.0, 3 * 3600.0), ("h", 3600.0, 3 * 86400.0))
DAYS = ("d", 86400.0)
SMALLEST = 1e-300  # below this a value is drawn as zero: the axis is one unit tall
SHORTEST = 1e-3  # a duration axis is at least 1 ms tall: finer differences are noise
FIXED_DIGITS = 7  # longer numbers are written in scientific notation (2e+12)


@dataclass(frozen=True)
class Axis:
    top: float  # where the axis ends, in the values' own unit (seconds for durations)
    ticks: tuple[tuple[float, str], ...]  # (value in the values' own unit, label), from 0 up


def axis(highest: float, unit: str = "") -> Axis:
    """An axis from 0 to a round value at least `highest` (at most about 1e300),
    in 2 to INTERVALS steps. `unit` "s" is a duration, "%" a percentage."""
    if unit == "s":
        highest = max(highest, SHORTEST)
    name, size = display_unit(highest, unit)
    scaled = highest / size if highest >= SMALLEST else 1.0
    multiple, power = _step(scaled / INTERVALS)
    step = multiple * 10.0**power
    count = max(1, math.ceil(scaled / step - 1e-9))
    numbers = [Decimal(i * multiple).scaleb(power) for i in range(count + 1)]
    scientific = len(_fixed(numbers[-1])) > FIXED_DIGITS or power < -4
    ticks = tuple(
        (i * step * size, f"{_scientific(n) if scientific else _fixed(n)}{' ' + name if name else ''}")
        for i, n in enumerate(numbers)
    )
    return Axis(top=count * step * size, ticks=ticks)


def display_unit(highest: float, unit: str) -> tuple[str, float]:
    """The unit an axis of values up to `highest` reads in, and its size in `unit`."""
    if unit != "s":
        return unit, 1.0
    for name, size, limit in DURATION_UNITS:
        if highest < limit:
            return name, size
    return DAYS


def format_duration(seconds: float) -> str:
    """One duration, as a label beside a bar: 3 significant digits at most, in its scale's unit."""
    name, size = display_unit(seconds, "s")
    value = seconds / size
    return f"{value:.3g} {name}" if value < 100 else f"{value:.0f} {name}"


def _step(raw: float) -> tuple[int, int]:
    """The round step (multiple, power: multiple x 10^power) at least `raw`."""
    power = math.floor(math.log10(raw))
    for multiple in (1, 2, 5):
        if multiple * 10.0**power >= raw * (1 - 1e-12):
            return multiple, power
    return 1, power + 1


def _fixed(number: Decimal) -> str:
    return f"{number.normalize():f}" if number else "0"


def _scientific(number: Decimal) -> str:
    return f"{number.normalize():e}" if number else "0"
