"""The charts' value axes (builds/insights/chart_ticks.py): round ticks, in a unit that
suits the scale, and never two ticks that read the same; the legend's wrapping."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from builds.insights import charts
from builds.insights.chart_ticks import axis, display_unit, format_duration

UNITS = ("", "s", "%")
# From far below a millisecond to far above a year, and the extremes the axis takes.
RANGES = sorted(
    {0.0, 1e-300, 1e300, 5e-7, 0.0012, 0.05, 0.0749, 0.12, 1.0, 9.99, 59.5, 119.9, 179.9, 180.0, 7199.0, 10_799.0}
    | {m * 10.0**k for m in (1, 1.5, 2, 2.5, 3.3, 4, 4.99, 5, 7.5, 9.9) for k in range(-9, 13)}
)


def assert_round_and_readable(highest: float, unit: str) -> None:
    scale = axis(highest, unit)
    values = [value for value, _ in scale.ticks]
    labels = [label for _, label in scale.ticks]
    assert len(set(labels)) == len(labels), f"repeated tick labels for {highest} {unit!r}: {labels}"
    assert 3 <= len(labels) <= 6 and values[0] == 0 and values == sorted(values)
    assert scale.top == values[-1] and scale.top >= highest * (1 - 1e-9)
    step = values[1] - values[0]
    shown = step / display_unit(highest, unit)[1]  # in the unit the labels name
    mantissa = shown / 10 ** math.floor(math.log10(shown) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5, 10)), (highest, unit, shown)
    for k, value in enumerate(values):
        assert math.isclose(value, k * step, rel_tol=1e-9)
    # One unit for the whole axis, named on every label.
    assert len({label.partition(" ")[2] for label in labels}) == 1


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("highest", RANGES)
def test_ticks_are_round_and_no_two_read_the_same(highest, unit):
    assert_round_and_readable(highest, unit)


@given(highest=st.floats(min_value=0, max_value=1e300, allow_nan=False), unit=st.sampled_from(UNITS))
def test_any_range_gets_round_ticks_that_read_differently(highest, unit):
    assert_round_and_readable(highest, unit)


def labels(highest: float, unit: str = "s") -> list[str]:
    return [label for _, label in axis(highest, unit).ticks]


def test_the_queue_wait_that_read_0_1_s_three_times_reads_in_milliseconds():
    # Issue 25: a mean wait of about 0.12 s drew "0.1 s, 0.1 s, 0.1 s, 0.0 s, 0.0 s".
    assert labels(0.12) == ["0 ms", "50 ms", "100 ms", "150 ms"]


@pytest.mark.parametrize(
    "highest, expected",
    [
        (0.0, ["0 ms", "0.2 ms", "0.4 ms", "0.6 ms", "0.8 ms", "1 ms"]),  # nothing yet: at least 1 ms tall
        (0.8, ["0 ms", "200 ms", "400 ms", "600 ms", "800 ms"]),
        (7.3, ["0 s", "2 s", "4 s", "6 s", "8 s"]),
        (119.0, ["0 s", "50 s", "100 s", "150 s"]),
        (600.0, ["0 min", "2 min", "4 min", "6 min", "8 min", "10 min"]),
        (1000.0, ["0 min", "5 min", "10 min", "15 min", "20 min"]),
        (5 * 3600.0, ["0 h", "1 h", "2 h", "3 h", "4 h", "5 h"]),
        (10 * 86400.0, ["0 d", "2 d", "4 d", "6 d", "8 d", "10 d"]),
    ],
)
def test_a_duration_axis_changes_its_unit_with_the_scale(highest, expected):
    assert labels(highest) == expected


def test_percentages_and_counts():
    assert labels(100, "%") == ["0 %", "20 %", "40 %", "60 %", "80 %", "100 %"]
    assert labels(37, "") == ["0", "10", "20", "30", "40"]
    assert labels(2e7, "") == ["0", "5e+6", "1e+7", "1.5e+7", "2e+7"]  # no 8-digit labels


@pytest.mark.parametrize("highest", [10.0**k for k in range(-3, 8)])
def test_duration_labels_fit_the_axis_margin_up_to_a_year(highest):
    assert max(len(label) for label in labels(highest * 3.7)) <= 7


@pytest.mark.parametrize(
    "seconds, expected",
    [(0.0004, "0.4 ms"), (0.05, "50 ms"), (1.234, "1.23 s"), (45, "45 s"), (150, "150 s"), (1000, "16.7 min")],
)
def test_one_duration_reads_in_its_scales_unit(seconds, expected):
    assert format_duration(seconds) == expected


@pytest.mark.parametrize("text", ["short", "(builds without a repository)", "org/" + "x" * 95, "a-b_c/d " * 20])
def test_wrapping_keeps_every_character_in_lines_that_fit(text):
    lines = charts.wrap(text, charts.LEGEND_CHARS)
    assert "".join(lines) == text and all(len(line) <= charts.LEGEND_CHARS for line in lines)


def test_a_long_repository_name_is_whole_in_the_legend():
    name = "an-organisation-with-a-long-name/a-repository-whose-name-goes-on-and-on"
    svg = str(
        charts.line_chart("t", ["d1", "d2"], [(name, [1.0, 2.0]), ("(builds without a repository)", [3.0, None])])
    )
    legend = [
        "".join(re.findall(r"<tspan[^>]*>([^<]*)</tspan>", text))
        for text in re.findall(r"<text class=\"legend\".*?</text>", svg)
    ]
    assert legend == [name, "(builds without a repository)"]
    assert "…" not in svg


@pytest.mark.parametrize("days", [1, 2, 3, 30])
def test_the_dates_under_a_chart_are_each_written_once(days):
    dates = [f"2026-12-{n + 1:02d}" for n in range(days)]
    svg = str(charts.line_chart("t", dates, [("a", [1.0] * days)], "s"))
    written = re.findall(r">(2026-12-\d\d)<", svg)
    assert len(written) == len(set(written)) == min(days, 3)
