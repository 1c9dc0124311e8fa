"""Usage over time as an SVG bar chart, drawn on the server: no script, nothing to fetch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 220
LEFT, BOTTOM, TOP = 48, 28, 12


def days_back(days: int, now: datetime | None = None) -> list[str]:
    """The last `days` UTC days, oldest first, today included."""
    today = (now or datetime.now(UTC)).date()
    return [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


def bar_chart(series: dict[str, int], title: str, unit: str) -> str:
    """One bar per label (in the order given), each with its value as a tooltip; the axis runs
    from 0 to the largest value. Colours are presentation attributes, which the CSP allows."""
    labels = list(series)
    top = max([*series.values(), 1])
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(labels), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"'
        f' class="chart" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}"'
        ' stroke="#888" stroke-width="1"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11"'
        f' fill="#444">{top}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end" font-size="11"'
        ' fill="#444">0</text>',
    ]
    every = max(1, len(labels) // 8)  # at most ~8 axis labels, whatever the range
    for i, label in enumerate(labels):
        value = series[label]
        h = plot_h * value / top
        x = LEFT + i * step + step * 0.15
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{step * 0.7:.1f}"'
            f' height="{h:.1f}" fill="#2f6fb0" data-label="{escape(label)}" data-value="{value}">'
            f"<title>{escape(label)}: {value} {escape(unit)}</title></rect>")
        if i % every == 0:
            parts.append(
                f'<text x="{x + step * 0.35:.1f}" y="{HEIGHT - 8}" text-anchor="middle"'
                f' font-size="10" fill="#444">{escape(label[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)
