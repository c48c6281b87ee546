"""The run's static HTML report: one self-contained file, charts as inline SVG, no script, no CDN."""

from __future__ import annotations

import html
from typing import Any

from simulators.report_learning import learning_section

_W, _H, _PAD = 640, 220, 40
_COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]


def line_chart(
    title: str,
    x: list[float],
    series: dict[str, list[float | None]],
    *,
    marks: list[float] = (),
    unit: str = "",
) -> str:
    """An SVG line chart with a legend; None is a gap, not a zero; ``marks`` draw vertical lines (events)."""
    values = [v for ys in series.values() for v in ys if v is not None]
    if not x or not values:
        return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>'
    x0, x1 = min(x), max(max(x), min(x) + 1e-9)
    top = max(values) or 1.0

    def px(v: float) -> float:
        return _PAD + (v - x0) / (x1 - x0) * (_W - 2 * _PAD)

    def py(v: float) -> float:
        return _H - _PAD + -v / top * (_H - 2 * _PAD)

    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img"'
        f' aria-label="{html.escape(title)}">',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<line x1="{_PAD}" y1="{_PAD}" x2="{_PAD}" y2="{_H - _PAD}" stroke="#888"/>',
        f'<text x="{_PAD - 4}" y="{_PAD + 4}" text-anchor="end" font-size="10">{top:.4g}{unit}</text>',
        f'<text x="{_PAD - 4}" y="{_H - _PAD}" text-anchor="end" font-size="10">0</text>',
        f'<text x="{_PAD}" y="{_H - _PAD + 14}" font-size="10">{x0:.0f}s</text>',
        f'<text x="{_W - _PAD}" y="{_H - _PAD + 14}" text-anchor="end" font-size="10">{x1:.0f}s</text>',
    ]
    for mark in marks:
        if x0 <= mark <= x1:
            parts.append(
                f'<line class="event" x1="{px(mark):.1f}" y1="{_PAD}" x2="{px(mark):.1f}" y2="{_H - _PAD}"'
                ' stroke="#aaa" stroke-dasharray="3,3"/>'
            )
    for i, (name, ys) in enumerate(series.items()):
        colour = _COLOURS[i % len(_COLOURS)]
        path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, ys, strict=False) if b is not None)
        parts.append(
            f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
        )
        parts.append(
            f'<text x="{_W - _PAD}" y="{_PAD + 12 * i}" text-anchor="end" font-size="11" fill="{colour}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}</figure>'


def version_strips(
    title: str,
    runs: dict[str, list[list[Any]]],
    origin: float,
    *,
    marks: list[tuple[float, str]] = (),
    flags: dict[str, list[tuple[float, str]]] | None = None,
    limit: int = 300,
) -> str:
    """One row per device, coloured by the model version its records came from, over run time.

    ``runs``: per device, ``[version, first_ts, last_ts]`` in seq order (record times, Unix);
    ``marks``: ``(unix time, label)``, e.g. each wave's start; ``flags``: per device, ``(unix time,
    label)`` drawn as a triangle on its row (a bad version it was sent, which made no record).
    Devices past ``limit`` are left out (and the caption says so): a row must stay a visible line.
    """
    devices = sorted(runs)[:limit]
    spans = [(r[1] - origin, r[2] - origin) for d in devices for r in runs[d]]
    if not spans:
        return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption><p>no data</p></figure>'
    width, left, top_pad = 900, 130, 50
    x1 = max(max(end for _, end in spans), max((t - origin for t, _ in marks), default=0.0), 1.0)
    row = max(1.0, min(8.0, 400 / len(devices)))
    height = top_pad + row * len(devices) + 30
    colours = {
        v: _COLOURS[i % len(_COLOURS)] for i, v in enumerate(sorted({r[0] for d in devices for r in runs[d]}))
    }

    def px(t: float) -> float:
        return left + max(0.0, t) / x1 * (width - left - 10)

    parts = [f'<svg viewBox="0 0 {width} {height:.0f}" width="{width}" height="{height:.0f}" role="img">']
    for i, device in enumerate(devices):
        y = top_pad + i * row
        if row >= 6:
            parts.append(
                f'<text x="{left - 4}" y="{y + row - 1:.1f}" text-anchor="end" font-size="7">'
                f"{html.escape(device)}</text>"
            )
        for version, first, last in runs[device]:
            x0, x_end = px(first - origin), px(last - origin)
            parts.append(
                f'<rect class="strip" x="{x0:.1f}" y="{y:.1f}" width="{max(1.0, x_end - x0):.1f}"'
                f' height="{max(0.8, row - 0.5):.1f}" fill="{colours[version]}"><title>{html.escape(device)}:'
                f" {html.escape(version)}</title></rect>"
            )
        for t, label in (flags or {}).get(device, []):
            x, half = px(t - origin), max(2.0, row / 2)
            shape = f"M{x - half:.1f},{y + row:.1f} l{half:.1f},{-row:.1f} l{half:.1f},{row:.1f}z"
            parts.append(
                f'<path class="flag" d="{shape}" fill="#111">'
                f"<title>{html.escape(device)}: {html.escape(label)}</title></path>"
            )
    bottom = top_pad + row * len(devices)
    last_x, level = -1e9, 0
    for t, label in sorted(marks):
        x = px(t - origin)
        # Marks close together (a rollout's end, the next one's start) get their labels on three levels.
        level = (level + 1) % 3 if x - last_x < 90 else 0
        last_x, ty = x, top_pad - 6 - 12 * level
        parts.append(
            f'<line class="wave" x1="{x:.1f}" y1="{ty + 2}" x2="{x:.1f}" y2="{bottom:.1f}"'
            ' stroke="#111" stroke-dasharray="2,2"/>'
            f'<text x="{x + 2:.1f}" y="{ty}" font-size="9">{html.escape(label)}</text>'
        )
    parts.append(f'<text x="{left}" y="{bottom + 14:.1f}" font-size="10">0s</text>')
    parts.append(
        f'<text x="{width - 10}" y="{bottom + 14:.1f}" text-anchor="end" font-size="10">{x1:.0f}s</text>'
    )
    for i, (version, colour) in enumerate(colours.items()):
        parts.append(
            f'<rect x="{left + 90 * i}" y="{bottom + 18:.1f}" width="10" height="8" fill="{colour}"/>'
            f'<text x="{left + 14 + 90 * i}" y="{bottom + 26:.1f}" font-size="10">'
            f"{html.escape(version)}</text>"
        )
    parts.append("</svg>")
    shown = f" ({len(devices)} of {len(runs)} devices)" if len(devices) < len(runs) else ""
    caption = html.escape(title + shown)
    return f'<figure class="chart wide"><figcaption>{caption}</figcaption>{"".join(parts)}</figure>'


def bad_version_flags(
    rollouts: list[dict[str, Any]], devices_by_version: dict[str, dict[str, dict[str, Any]]]
) -> dict[str, list[tuple[float, str]]]:
    """Each device a defective version was sent to, at its canary's start, with how it ended there."""
    flags: dict[str, list[tuple[float, str]]] = {}
    for r in rollouts:
        started = next((w["started_at"] for w in r.get("waves", []) if w.get("started_at")), None)
        if not r.get("defect") or started is None:
            continue
        for device, ended in devices_by_version.get(r["version"], {}).items():
            label = f"{r['version']} ({r['defect']}): {ended.get('outcome')}, {ended.get('reason')}"
            flags.setdefault(device, []).append((float(started), label))
    return flags


def wave_marks(rollouts: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """Each started wave of each rollout, and each rollout's end, as ``(unix time, label)``."""
    marks = []
    for r in rollouts:
        for wave in r.get("waves", []):
            if wave.get("started_at") is not None:
                marks.append((float(wave["started_at"]), f"{r['version']} w{wave['index'] + 1}"))
        if r.get("ended_at") is not None:
            marks.append((float(r["ended_at"]), f"{r['version']} {r['state']}"))
    return marks


def bar_chart(title: str, bars: dict[str, float | None]) -> str:
    """Horizontal bars of values in [0, 1] (accuracies); a missing value is said, not drawn."""
    rows = []
    for i, (name, value) in enumerate(bars.items()):
        y = 10 + i * 28
        label = f"{html.escape(name)}: {'n/a' if value is None else f'{value:.3f}'}"
        width = 0.0 if value is None else max(0.0, min(1.0, value)) * (_W - 260)
        colour = _COLOURS[i % len(_COLOURS)]
        rows.append(
            f'<text x="0" y="{y + 14}" font-size="11">{label}</text>'
            f'<rect class="bar" x="240" y="{y}" width="{width:.1f}" height="18" fill="{colour}"/>'
        )
    height = 20 + 28 * len(bars)
    svg = f'<svg viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" role="img">{"".join(rows)}</svg>'
    return f'<figure class="chart"><figcaption>{html.escape(title)}</figcaption>{svg}</figure>'


def _rate(t: list[float], cumulative: list[float]) -> list[float]:
    out = [0.0]
    for i in range(1, len(t)):
        dt = t[i] - t[i - 1]
        out.append(max(0.0, (cumulative[i] - cumulative[i - 1]) / dt) if dt > 0 else 0.0)
    return out


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def render_html(report: dict[str, Any]) -> str:
    """The whole page for one run's ``report.json`` content."""
    tl = report.get("timeline", {})
    t = tl.get("t", [])
    marks = [float(e.split("s", 1)[0]) for e in report.get("events", []) if e.split("s", 1)[0].strip()]
    versions = sorted({v for sample in tl.get("versions", []) for v in sample})
    charts = [
        line_chart(
            "Throughput (records/s)",
            t,
            {
                "delivered by site brokers": _rate(t, tl.get("delivered", [])),
                "counted at the controller": _rate(t, tl.get("at_controller", [])),
            },
            marks=marks,
        ),
        line_chart("Devices online", t, {"online": tl.get("online", [])}, marks=marks),
        line_chart(
            "Model versions in the fleet (online devices)",
            t,
            {v: [s.get(v, 0) for s in tl.get("versions", [])] for v in versions},
            marks=marks,
        ),
        line_chart(
            "Gateways' upstream queues (items) and uplink (KB/s)",
            t,
            {
                "queued": tl.get("queued", []),
                "uplink KB/s": [r / 1024 for r in _rate(t, tl.get("uplink_bytes", []))],
            },
            marks=marks,
        ),
    ]
    drift: dict[str, list[dict[str, Any]]] = {}
    for row in report.get("drift_scores", []):
        drift.setdefault(f"{row['site']} ({row['method']})", []).append(row)
    if drift:
        start = min(r["window_start"] for rows in drift.values() for r in rows)
        xs = sorted({r["window_start"] - start for rows in drift.values() for r in rows})
        series = {
            name: [next((r["score"] for r in rows if r["window_start"] - start == x), None) for x in xs]
            for name, rows in drift.items()
        }
        charts.append(line_chart("Drift score per window (PSI; above 0.25 is a shift)", xs, series))
    accuracy = [
        ("training (eval set)", report.get("training_accuracy")),
        ("devices, whole run", report.get("device_model_accuracy")),
        ("devices, before drift", report.get("accuracy_before_drift")),
        ("devices, after drift", report.get("accuracy_after_drift")),
    ]
    charts.append(bar_chart("Device model accuracy before and after drift", dict(accuracy)))
    ota = report.get("ota")
    if ota:
        charts.insert(
            3,
            version_strips(
                "Model version of each device's records over time (dashed: rollout waves and ends;"
                " triangles: a defective version sent to that device, refused or rolled back)",
                ota["version_runs"],
                ota["stream_started_at"],
                marks=wave_marks(report.get("rollouts", [])),
                flags=bad_version_flags(report.get("rollouts", []), ota.get("devices_by_version", {})),
            ),
        )
    lag = report.get("simulator", {})
    series = lag.get("series", {})
    charts.append(
        line_chart(
            f"The simulator's own lag (s; limit {lag.get('lag_limit_s', 'n/a')})",
            series.get("t", []),
            {
                "event loop delay": series.get("loop_delay_s", []),
                "sensors behind schedule": series.get("readings_behind_s", []),
            },
            marks=marks,
        )
    )
    invariants = "".join(
        f'<li class="{_VERDICT[ok][1]}">{_VERDICT[ok][0]} {html.escape(name.replace("_", " "))}</li>'
        for name, ok in report.get("invariants", {}).items()
    )
    banner = ""
    if lag.get("behind"):
        banner = f'<p class="behind">Simulator fell behind: {html.escape(str(lag.get("message")))}</p>'
    lag_rows = [(k, v) for k, v in lag.items() if k not in ("series", "message")]
    figures = {
        k: v for k, v in report.items() if not isinstance(v, list | dict) and k not in ("scenario", "run_dir")
    }
    compiler = report.get("compiler", [])
    compiler_rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c)))}</td>" for c in _COMPILER) + "</tr>"
        for row in compiler
    )
    name = html.escape(str(report.get("scenario")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgefleet run {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}}
.charts{{display:flex;flex-wrap:wrap;gap:1em}} figure{{margin:0}} figcaption{{font-weight:600}}
.wide{{flex-basis:100%}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ddd;padding:2px 8px;text-align:left}}
.pass{{color:#16a34a}} .fail{{color:#dc2626;font-weight:700}} .unjudged{{color:#ca8a04;font-weight:700}}
.behind{{background:#fee2e2;border:2px solid #dc2626;padding:0.5em 1em;font-weight:600}}</style></head><body>
<h1>edgefleet run: {name}</h1>{banner}
<h2>Invariants</h2><ul id="invariants">{invariants}</ul>
{learning_section(report.get("learning"))}
<h2>Charts</h2><div class="charts">{"".join(charts)}</div>
<h2>Model accuracy</h2>{_table(accuracy)}
<h2>Compiler</h2><table><tr>{"".join(f"<th>{c}</th>" for c in _COMPILER)}</tr>{compiler_rows}</table>
{_rollouts(report.get("rollouts", []), report.get("ota"))}
<h2>Events</h2><ol>{"".join(f"<li>{html.escape(e)}</li>" for e in report.get("events", []))}</ol>
<h2>Figures</h2>{_table(list(figures.items()))}
<h2>The simulator's own lag</h2>{_table(lag_rows)}
</body></html>
"""


def _rollouts(rollouts: list[dict[str, Any]], ota: dict[str, Any] | None) -> str:
    """The rollouts: how each ended against how it should have, and every decision with its numbers."""
    if not rollouts:
        return ""
    rows = []
    for r in rollouts:
        seconds = f"{r['seconds']:.0f}" if r.get("seconds") is not None else "-"
        decisions = "<br>".join(
            html.escape(f"w{d['wave'] + 1} {d['action']}: {d['reason']}") for d in r.get("decisions", [])
        )
        rows.append(
            f"<tr><td>{html.escape(r['version'])}</td><td>{html.escape(str(r.get('defect') or ''))}</td>"
            f"<td>{html.escape(r['state'])}</td><td>{html.escape(r['expected'])}</td><td>{seconds}</td>"
            f"<td>{decisions}</td></tr>"
        )
    problems = ""
    if ota and ota.get("problems"):
        items = "".join(
            f"<li>{html.escape(name.replace('_', ' '))}: {html.escape('; '.join(found))}</li>"
            for name, found in ota["problems"].items()
        )
        problems = f"<ul>{items}</ul>"
    return (
        "<h2>Rollouts</h2><table><tr><th>version</th><th>defect</th><th>ended</th><th>expected</th>"
        f"<th>seconds</th><th>decisions</th></tr>{''.join(rows)}</table>{problems}"
    )


_VERDICT = {True: ("PASS", "pass"), False: ("FAIL", "fail"), None: ("NOT JUDGED", "unjudged")}
_COMPILER = ["target", "size_bytes", "accuracy", "accuracy_drop_pts", "latency_p50_ms", "latency_p95_ms"]
