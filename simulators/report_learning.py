"""The learning loop's part of report.html: accuracy per site on one time axis with every step of
the loop marked (the timeline's rollouts before it, drift, alarms, job steps, rollout waves and
ends), and the tables behind it."""

from __future__ import annotations

import html
from typing import Any

_COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
_MARK_COLOURS = {
    "ota_wave": "#64748b",
    "ota_end": "#0f766e",
    "drift": "#dc2626",
    "alarm_fired": "#ea580c",
    "alarm_resolved": "#16a34a",
    "job_queued": "#6b7280",
    "job_step": "#9333ea",
    "job_end": "#9333ea",
    "rollout_wave": "#2563eb",
    "rollout_end": "#0891b2",
}


def accuracy_timeline(learning: dict[str, Any]) -> str:
    """Accuracy per site per window over run time (0..1), each mark a labelled vertical line."""
    step = float(learning["accuracy_series_s"])
    series: dict[str, list[float | None]] = learning["accuracy_series"]
    marks: list[dict[str, Any]] = learning["marks"]
    width, left, right, plot_h = 1100, 50, 20, 220
    label_rows = max(1, len(marks))
    top = 20 + 11 * label_rows  # every mark gets a label line of its own: none overlaps another
    height = top + plot_h + 50
    length = max((len(v) for v in series.values()), default=0) * step
    x1 = max(length, max((m["t"] for m in marks), default=0.0), 1.0)

    def px(t: float) -> float:
        return left + max(0.0, t) / x1 * (width - left - right)

    def py(v: float) -> float:
        return top + (1.0 - v) * plot_h

    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"'
        ' aria-label="Accuracy per site with the learning loop\'s steps">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#888"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
    ]
    for v in (0.0, 0.5, 1.0):
        parts.append(
            f'<text x="{left - 4}" y="{py(v) + 4:.1f}" text-anchor="end" font-size="10">{v:g}</text>'
        )
    parts.append(f'<text x="{left}" y="{top + plot_h + 14}" font-size="10">0s</text>')
    parts.append(
        f'<text x="{width - right}" y="{top + plot_h + 14}" text-anchor="end" font-size="10">{x1:.0f}s</text>'
    )
    for i, mark in enumerate(marks):
        x, ty = px(mark["t"]), 14 + 11 * i
        colour = _MARK_COLOURS.get(mark["what"], "#111")
        parts.append(
            f'<line class="mark {html.escape(mark["what"])}" x1="{x:.1f}" y1="{ty + 2}" x2="{x:.1f}"'
            f' y2="{top + plot_h}" stroke="{colour}" stroke-dasharray="2,3" stroke-width="0.8"/>'
            f'<text x="{x + 2:.1f}" y="{ty}" font-size="9" fill="{colour}">{mark["t"]:.0f}s'
            f" {html.escape(mark['label'])}</text>"
        )
    for i, (site, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[i % len(_COLOURS)]
        points = " ".join(
            f"{px((k + 0.5) * step):.1f},{py(v):.1f}" for k, v in enumerate(values) if v is not None
        )
        parts.append(
            f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
            f'<text x="{left + 10 + 120 * i}" y="{top + plot_h + 32}" font-size="11" fill="{colour}">'
            f"{html.escape(site)}</text>"
        )
    parts.append("</svg>")
    caption = (
        f"Accuracy per site ({step:g} s windows of labelled records stored at the controller) and each"
        " step of the learning loop"
    )
    return (
        f'<figure class="chart wide"><figcaption>{html.escape(caption)}</figcaption>{"".join(parts)}</figure>'
    )


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("n/a" if value is None else str(value))


def learning_section(learning: dict[str, Any] | None) -> str:
    """The section of report.html; empty when the scenario has no learning loop."""
    if not learning:
        return ""
    sites = "".join(
        f"<tr><td>{html.escape(site)}</td><td>{_cell(a['accuracy_before_drift'])}</td>"
        f"<td>{_cell(a['accuracy_after_drift'])}</td><td>{_cell(a['accuracy_after_recovery'])}</td>"
        f"<td>{_cell(a['labelled_after_recovery'])}</td><td>{_cell(a['drifted_at_s'])}</td>"
        f"<td>{_cell(a['recovered_at_s'])}</td><td>{_cell(a.get('recovery_seconds'))}</td></tr>"
        for site, a in learning["accuracy_per_site"].items()
    )
    jobs = "".join(
        f"<tr><td>{_cell(j['job_id'])}</td><td>{_cell(j['kind'])}</td><td>{_cell(j['site'])}</td>"
        f"<td>{_cell(j['alarm'])}</td><td>{_cell(j['state'])}</td><td>{_cell(j['version'])}</td>"
        f"<td>{_cell(len(j['rounds']))}</td><td>{_cell(j['rollout_state'])}</td>"
        f"<td>{_cell(j['error'] or j['outcome'])}</td></tr>"
        for j in learning["jobs"]
    )
    alarms = "".join(
        f"<tr><td>{a['id']}</td><td>{_cell(a['site_id'])}</td><td>{_cell(a['kind'])}</td>"
        f"<td>{_cell(a['value'])}</td><td>{_cell(a['threshold'])}</td><td>{_cell(a['action'])}</td>"
        f"<td>{'resolved' if a['resolved_at'] else 'open'}</td></tr>"
        for a in learning["alarms"]
    )
    problems = "".join(
        f"<li>{html.escape(what)}: {html.escape('; '.join(found))}</li>"
        for what, found in learning.get("problems", {}).items()
    )
    return (
        '<h2>Learning loop</h2><div class="charts">'
        + accuracy_timeline(learning)
        + "</div><table><tr><th>site</th><th>accuracy before drift</th><th>after drift</th>"
        "<th>accuracy_after_recovery</th><th>labelled after recovery</th><th>drift at (s)</th>"
        f"<th>recovered at (s)</th><th>recovery_seconds (alarm to rollout end)</th></tr>{sites}</table>"
        "<h3>Jobs</h3><table><tr><th>job</th><th>kind</th><th>site</th><th>answering</th><th>state</th>"
        f"<th>version</th><th>FL rounds</th><th>rollout</th><th>outcome</th></tr>{jobs}</table>"
        "<h3>Alarms</h3><table><tr><th>id</th><th>site</th><th>kind</th><th>value</th><th>threshold</th>"
        f"<th>action</th><th>state</th></tr>{alarms}</table>" + (f"<ul>{problems}</ul>" if problems else "")
    )
