"""Small server-side SVG charts: no JavaScript, nothing vendored, readable without a browser
that runs scripts. Values are escaped by building the markup from numbers only."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from markupsafe import Markup, escape

WIDTH, HEIGHT = 640, 160
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 40, 10, 10, 24


def _nice_max(value: float) -> float:
    """A round upper bound for the y axis (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1.0
    scale = 1.0
    while scale * 10 <= value:
        scale *= 10
    for step in (1, 2, 5, 10):
        if value <= step * scale:
            return step * scale
    return 10 * scale


def line_chart(
    values: Sequence[float],
    *,
    start: datetime,
    step: timedelta,
    title: str,
    kind: str = "line",
) -> Markup:
    """A line (or bar) chart of per-step values, with a y scale and time marks."""
    n = max(1, len(values))
    top = _nice_max(max(values, default=0))
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(i: float) -> float:
        return PAD_LEFT + plot_w * i / max(1, n - (0 if kind == "bar" else 1))

    def y(v: float) -> float:
        return PAD_TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for frac in (0, 0.5, 1):
        yy = y(top * frac)
        parts.append(
            f'<line x1="{PAD_LEFT}" y1="{yy:.1f}" x2="{WIDTH - PAD_RIGHT}" y2="{yy:.1f}" '
            'class="grid"/>'
        )
        label = f"{top * frac:g}"
        parts.append(f'<text x="{PAD_LEFT - 4}" y="{yy + 4:.1f}" class="axis end">{label}</text>')
    marks = 4
    for k in range(marks + 1):
        i = (n - (0 if kind == "bar" else 1)) * k / marks
        at = start + step * (i + (0 if kind == "bar" else 1))
        anchor = "start" if k == 0 else "end" if k == marks else "middle"
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - 6}" class="axis {anchor}">'
            f"{at.strftime('%H:%M')}</text>"
        )
    if kind == "bar":
        bar_w = plot_w / n
        for i, v in enumerate(values):
            if v:
                parts.append(
                    f'<rect x="{x(i) + 0.5:.1f}" y="{y(v):.1f}" width="{max(1.0, bar_w - 1):.1f}" '
                    f'height="{PAD_TOP + plot_h - y(v):.1f}" class="bar"/>'
                )
    else:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" class="line"/>')
    parts.append("</svg>")
    return Markup("".join(parts))
