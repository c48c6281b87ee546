"""Inline SVG charts with axes, ticks, units and thresholds: no JavaScript, no build step.

Each function returns markup ready for a template. Times are Unix seconds, shown in UTC.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

#: Plot margins: room for the y tick labels and axis title (left), the legend (top), the x ticks
#: and axis title (bottom).
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 44
#: Time steps a time axis ticks at, in seconds: 1 s up to a week.
_TIME_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    604800,
)
COLORS = ("#3d7bd9", "#b3261e", "#11804a", "#8e44ad", "#d98c1f", "#2c3e50")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str = COLORS[0]
    #: Dots (one per device report) instead of a line.
    dots: bool = False


@dataclass(frozen=True)
class Threshold:
    value: float
    label: str


def percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def plain(value: float) -> str:
    return f"{value:.3g}"


def time_chart(
    series: Sequence[Series],
    *,
    y_label: str,
    y_format: Callable[[float], str] = plain,
    y_range: tuple[float, float] | None = None,
    thresholds: Sequence[Threshold] = (),
    markers: Sequence[tuple[float, str]] = (),
    css_class: str = "chart",
    width: int = 640,
    height: int = 220,
) -> Markup:
    """Values over time: a time axis (UTC), a y axis titled ``y_label`` (name and unit), a dashed
    line per threshold, a dotted vertical line per marker (e.g. a wave's start)."""
    xs = [x for s in series for x, _ in s.points] + [x for x, _ in markers]
    ys = [y for s in series for _, y in s.points] + [t.value for t in thresholds]
    x0, x1 = (min(xs), max(xs)) if xs else (time.time() - 60, time.time())
    if x1 - x0 < 1:
        x0, x1 = x0 - 30, x1 + 30
    y0, y1 = y_range if y_range is not None else _padded(ys)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (min(max(y, y0), y1) - y0) / (y1 - y0) * plot_h

    parts = [_frame(width, height, css_class, y_label)]
    for tick in _ticks(y0, y1):
        parts.append(_hline(py(tick), width, "grid") + _text(_LEFT - 6, py(tick) + 4, y_format(tick), "end"))
    step = next((s for s in _TIME_STEPS if (x1 - x0) / s <= 6), _TIME_STEPS[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    for tick in range(math.ceil(x0 / step) * step, int(x1) + 1, step):
        parts.append(
            f'<line class="tick" x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{_TOP + plot_h}" '
            f'y2="{_TOP + plot_h + 4}" stroke="#1d2733"></line>'
            + _text(px(tick), _TOP + plot_h + 16, time.strftime(fmt, time.gmtime(tick)), "middle")
        )
    parts.append(_text(_LEFT + plot_w / 2, height - 6, "time (UTC)", "middle", "axis-title"))
    for x, label in markers:
        parts.append(
            f'<line class="marker" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{_TOP}" y2="{_TOP + plot_h}" '
            f'stroke="#6b7785" stroke-dasharray="2 3"></line>' + _text(px(x) + 3, _TOP + 10, label, "start")
        )
    for threshold in thresholds:
        y = py(threshold.value)
        parts.append(
            f'<line class="threshold" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#b3261e" stroke-dasharray="6 4"></line>'
            + _text(_LEFT + plot_w - 4, y - 4, f"{threshold.label} {y_format(threshold.value)}", "end")
        )
    for index, s in enumerate(series):
        coords = [(px(x), py(y)) for x, y in sorted(s.points)]
        if s.dots:
            parts.extend(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"></circle>'
                for x, y in coords
            )
        elif coords:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(
                f'<polyline class="series" points="{points}" fill="none" stroke="{s.color}" '
                'stroke-width="2"></polyline>'
            )
        legend_x = _LEFT + 150 * index
        parts.append(
            f'<rect class="legend" x="{legend_x}" y="8" width="10" height="10" fill="{s.color}"></rect>'
            + _text(legend_x + 14, 17, s.name, "start")
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    bars: Sequence[tuple[str, float]], *, x_label: str, element_id: str, width: int = 640
) -> Markup:
    """Horizontal bars, one per label, on an x axis titled ``x_label`` (name and unit) with ticks."""
    label_w, row = 220, 24
    plot_w = width - label_w - _RIGHT - 40
    top = max((v for _, v in bars), default=1) or 1
    ticks = _ticks(0, top)
    top = max(top, ticks[-1])
    height = row * len(bars) + 44
    axis_y = row * len(bars) + 4
    parts = [
        f'<svg id="{element_id}" width="{width}" height="{height}" role="img" aria-label="{escape(x_label)}">'
    ]
    for index, (label, value) in enumerate(bars):
        y = row * index + 4
        w = value / top * plot_w
        parts.append(
            _text(label_w - 8, y + 12, label, "end")
            + f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="16"></rect>'
            + _text(label_w + w + 6, y + 12, f"{value:g}", "start")
        )
    parts.append(
        f'<line x1="{label_w}" x2="{label_w + plot_w}" y1="{axis_y}" y2="{axis_y}" stroke="#1d2733"></line>'
    )
    for tick in ticks:
        x = label_w + tick / top * plot_w
        parts.append(
            f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y}" y2="{axis_y + 4}" '
            'stroke="#1d2733"></line>' + _text(x, axis_y + 16, f"{tick:g}", "middle")
        )
    parts.append(_text(label_w + plot_w / 2, axis_y + 34, x_label, "middle", "axis-title"))
    parts.append("</svg>")
    return Markup("".join(parts))


def _frame(width: int, height: int, css_class: str, y_label: str) -> str:
    plot_h = height - _TOP - _BOTTOM
    return (
        f'<svg class="{css_class}" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(y_label)}">'
        f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{width - _LEFT - _RIGHT}" height="{plot_h}" '
        f'fill="#f4f6f9"></rect>'
        f'<text class="axis-title" transform="translate(14,{_TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )


def _hline(y: float, width: int, css_class: str) -> str:
    return (
        f'<line class="{css_class}" x1="{_LEFT}" x2="{width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
        f'stroke="#dde3ea"></line>'
    )


def _text(x: float, y: float, text: str, anchor: str, css_class: str = "label") -> str:
    return f'<text class="{css_class}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def _padded(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    low, high = min(0.0, min(values)), max(values)
    if high - low < 1e-9:
        return low - 1, high + 1
    return low, high + (high - low) * 0.1


def _ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Round values (1, 2 or 5 times a power of ten apart) from ``low`` up to past ``high``."""
    span = (high - low) or 1.0
    magnitude = 10 ** math.floor(math.log10(span / most))
    step = next(m * magnitude for m in (1, 2, 5, 10) if span / (m * magnitude) <= most)
    first = math.ceil(low / step) * step
    count = math.floor((high - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(max(count, 1))]
