"""Small inline SVG charts, drawn on the server: no script, nothing fetched from
elsewhere (a farm may have no internet). Pure: numbers in, markup out.

Every text stays inside the picture: the value axis's labels get the margin
they need (builds/insights/chart_ticks.py), the legend sits under the plot and wraps
long names, and a bar's label too long for its room is cut at its end (the
whole of it in a tooltip). Widths are reckoned at CHAR_WIDTH per character."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from builds.insights.chart_ticks import axis, format_duration

WIDTH, PLOT_HEIGHT = 720, 200
TOP, AXIS_BELOW, RIGHT = 12, 28, 40  # the dates under the plot; room for the last one's half
FONT = 11
# No glyph of the font is wider than 1 em: a legend line of LEGEND_CHARS always fits its column.
CHAR_WIDTH, LEGEND_LINE = 8, 14
LEGEND_COLUMNS, LEGEND_CHARS = 2, 30
# Told apart without relying on colour alone: the legend names each line.
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None]]],
    unit: str = "",
    top: float | None = None,
) -> SafeString:
    """One line per series over the x `labels` (days); None is a gap. The value
    axis goes up to `top`, or a round value over the highest point."""
    values = [v for _, points in series for v in points if v is not None]
    scale = axis(top if top is not None else max(values, default=0), unit)
    left = 12 + CHAR_WIDTH * max(len(label) for _, label in scale.ticks)
    plot_w = WIDTH - left - RIGHT
    step = plot_w / max(len(labels) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{left + i * step:.1f},{TOP + PLOT_HEIGHT - (v / scale.top) * PLOT_HEIGHT:.1f}"

    parts = [f"<title>{escape(title)}</title>"]
    for value, label in scale.ticks:
        y = TOP + PLOT_HEIGHT - PLOT_HEIGHT * value / scale.top
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    axis_y = TOP + PLOT_HEIGHT + AXIS_BELOW - 8
    for i in sorted({0, len(labels) // 2, len(labels) - 1}) if labels else ():
        parts.append(f'<text x="{left + i * step:.1f}" y="{axis_y}" text-anchor="middle">{escape(labels[i])}</text>')
    for n, (_, points) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        for run in _runs(points):
            if len(run) == 1:
                x, y = xy(*run[0]).split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
            else:
                path = " ".join(xy(i, v) for i, v in run)
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
    legend, legend_height = _legend([name for name, _ in series], TOP + PLOT_HEIGHT + AXIS_BELOW + 6)
    parts.extend(legend)
    return _svg(title, parts, TOP + PLOT_HEIGHT + AXIS_BELOW + legend_height)


def bar_chart(
    title: str, bars: Sequence[tuple[str, float]], unit: str = "", top: float | None = None, max_label_width: int = 240
) -> SafeString:
    """Horizontal bars, one per (label, value), the labels in as many pixels as
    the longest needs, up to `max_label_width`."""
    label_width = min(max_label_width, 12 + CHAR_WIDTH * max((len(label) for label, _ in bars), default=0))
    height = TOP + AXIS_BELOW + 22 * max(len(bars), 1)
    top = axis(top if top is not None else max((v for _, v in bars), default=0), unit).top
    plot_w = WIDTH - label_width - 70
    parts = [f"<title>{escape(title)}</title>"]
    for n, (label, value) in enumerate(bars):
        y = TOP + 22 * n
        width = max(value / top, 0) * plot_w
        short = _cut(label, (label_width - 6) // CHAR_WIDTH)
        parts.append(f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{escape(short)}')
        parts.append(f"<title>{escape(label)}</title></text>")
        parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{width:.1f}" height="14" fill="{COLOURS[0]}"/>')
        parts.append(f'<text x="{label_width + 6 + width:.1f}" y="{y + 14}">{escape(_value(value, unit))}</text>')
    return _svg(title, parts, height)


def _legend(names: Sequence[str], y0: int) -> tuple[list[str], int]:
    """Each name beside its colour, in columns under the plot, wrapped onto more
    lines where long; the markup and the height it takes."""
    column_w = (WIDTH - 16) // LEGEND_COLUMNS
    parts: list[str] = []
    height = 0
    for row in range(0, len(names), LEGEND_COLUMNS):
        tallest = 1
        for n in range(row, min(row + LEGEND_COLUMNS, len(names))):
            x = 8 + column_w * (n - row)
            lines = wrap(names[n], LEGEND_CHARS)
            tallest = max(tallest, len(lines))
            colour = COLOURS[n % len(COLOURS)]
            parts.append(f'<rect x="{x}" y="{y0 + height + 2}" width="10" height="10" fill="{colour}"/>')
            spans = "".join(
                f'<tspan x="{x + 14}" dy="{0 if k == 0 else LEGEND_LINE}">{escape(line)}</tspan>'
                for k, line in enumerate(lines)
            )
            parts.append(f'<text class="legend" y="{y0 + height + 11}">{spans}</text>')
        height += tallest * LEGEND_LINE + 4
    return parts, height + 4


def wrap(text: str, size: int) -> list[str]:
    """`text` in lines of at most `size` characters, broken after a / - _ : or
    space where there is one in the line's second half, else anywhere."""
    lines = []
    while len(text) > size:
        cut = max(text.rfind(mark, size // 2, size) for mark in "/-_: ")
        cut = cut + 1 if cut > 0 else size
        lines.append(text[:cut])
        text = text[cut:]
    return [*lines, text]


def _svg(title: str, parts: list[str], height: int) -> SafeString:
    body = "".join(parts)
    return mark_safe(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}"'
        f' width="{WIDTH}" height="{height}" font-size="{FONT}" font-family="sans-serif">{body}</svg>'
    )


def _runs(points: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The stretches of consecutive values, split at the gaps."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(points):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [run for run in runs if run]


def _value(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0f} %"
    if unit == "s":
        return format_duration(value)
    return f"{value:g}"


def _cut(label: str, size: int) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"
