"""Small inline SVG charts, drawn on the server: no script, nothing fetched from
elsewhere (a farm may have no internet). Pure: numbers in, markup out."""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 56, 170, 12, 28
# Told apart without relying on colour alone: the legend names each line.
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


def line_chart(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], unit: str = ""
) -> SafeString:
    """One line per series over the x `labels` (days); None is a gap."""
    values = [v for _, points in series for v in points if v is not None]
    highest = max(values, default=0)
    # Minutes on the axis when minutes are shown: round ones (2, 5, 10 min...).
    top = _nice(highest / 60) * 60 if unit == "s" and highest >= 120 else _nice(highest)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(labels) - 1, 1)

    def xy(i: int, v: float) -> str:
        return f"{LEFT + i * step:.1f},{TOP + plot_h - (v / top) * plot_h:.1f}"

    parts = [_frame(title, top, unit, plot_w, plot_h)]
    for i in (0, len(labels) // 2, len(labels) - 1) if labels else ():
        parts.append(
            f'<text x="{LEFT + i * step:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(labels[i])}</text>'
        )
    for n, (name, points) in enumerate(series):
        colour = COLOURS[n % len(COLOURS)]
        for run in _runs(points):
            path = " ".join(xy(i, v) for i, v in run)
            if len(run) == 1:
                parts.append(f'<circle cx="{path.split(",")[0]}" cy="{path.split(",")[1]}" r="2.5" fill="{colour}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        y = TOP + 14 * n + 10
        parts.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{y - 8}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 24}" y="{y + 1}">{escape(_short(name))}</text>')
    return _svg(title, parts)


def bar_chart(
    title: str, bars: Sequence[tuple[str, float]], unit: str = "", top: float | None = None, label_width: int = 160
) -> SafeString:
    """Horizontal bars, one per (label, value), the labels in `label_width` pixels."""
    height = TOP + BOTTOM + 22 * max(len(bars), 1)
    top = top or _nice(max((v for _, v in bars), default=0))
    plot_w = WIDTH - label_width - 70
    parts = [f"<title>{escape(title)}</title>"]
    for n, (label, value) in enumerate(bars):
        y = TOP + 22 * n
        width = max(value / top, 0) * plot_w
        short = _short(label, label_width // 6)
        parts.append(f'<text x="{label_width - 6}" y="{y + 14}" text-anchor="end">{escape(short)}')
        parts.append(f"<title>{escape(label)}</title></text>")
        parts.append(f'<rect x="{label_width}" y="{y + 3}" width="{width:.1f}" height="14" fill="{COLOURS[0]}"/>')
        parts.append(f'<text x="{label_width + 6 + width:.1f}" y="{y + 14}">{_format(value, unit)}</text>')
    return _svg(title, parts, height)


def _frame(title: str, top: float, unit: str, plot_w: float, plot_h: float) -> str:
    lines = [f"<title>{escape(title)}</title>"]
    for k in range(5):
        y = TOP + plot_h - plot_h * k / 4
        lines.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        lines.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_format(top * k / 4, unit)}</text>')
    return "".join(lines)


def _svg(title: str, parts: list[str], height: int = HEIGHT) -> SafeString:
    body = "".join(parts)
    return mark_safe(
        f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {height}"'
        f' width="{WIDTH}" height="{height}" font-size="11" font-family="sans-serif">{body}</svg>'
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


def _nice(value: float) -> float:
    """A round top for an axis: 1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** len(str(int(value))) / 10 if value >= 1 else 0.1
    while power * 10 < value:
        power *= 10
    while power / 10 >= value and power > 1e-3:
        power /= 10
    for factor in (1, 2, 5, 10):
        if power * factor >= value:
            return power * factor
    return value


def _format(value: float, unit: str) -> str:
    if unit == "%":
        return f"{value:.0f} %"
    if unit == "s":
        return f"{value / 60:.1f} min" if value >= 120 else f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    return f"{value:g}"


def _short(label: str, size: int = 24) -> str:
    return label if len(label) <= size else "…" + label[-(size - 1) :]
