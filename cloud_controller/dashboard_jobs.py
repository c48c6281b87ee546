"""The dashboard's jobs pages: the list, and one job with its steps, logs, artifacts and FL rounds.

Federated rounds are drawn per round (loss, accuracy, clients sampled / responded / failed); an
operator gets a cancel button, which goes through `cloud_controller.jobs` as the API's does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Annotated

from fastapi import APIRouter, Cookie, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlmodel import col, select

from cloud_controller import jobs
from cloud_controller.api.deps import SessionDep
from cloud_controller.audit import who
from cloud_controller.charts import COLORS, Series, percent, plain
from cloud_controller.dashboard import signed_in, templates
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.job_models import JOB_ID_PATTERN, Job, JobStatus, RoundPublic
from cloud_controller.models import Role

router = APIRouter(include_in_schema=False)
JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN)]
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 44


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    signed_in(session, edgefleet_token)
    rows = session.exec(select(Job).order_by(col(Job.created_at).desc()).limit(200)).all()
    return templates.TemplateResponse(request, "jobs.html", {"jobs": rows})


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    request: Request,
    session: SessionDep,
    job_id: JobId,
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    caller = signed_in(session, edgefleet_token)
    try:
        job = jobs.get(session, job_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    status = jobs.status(session, job)
    return templates.TemplateResponse(
        request,
        "job.html",
        {
            "j": status,
            "charts": round_charts(status.rounds),
            "summary": summary(status),
            "operator": caller.role is Role.OPERATOR,
            "error": request.query_params.get("error"),
        },
    )


@router.post("/jobs/{job_id}/cancel")
def job_cancel(
    session: SessionDep, job_id: JobId, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    caller = signed_in(session, edgefleet_token)
    if caller.role is not Role.OPERATOR:
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
    target = f"/jobs/{job_id}"
    try:
        jobs.cancel(session=session, job_id=job_id, actor=who(caller))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        return RedirectResponse(f"{target}?error={exc}", status_code=303)
    return RedirectResponse(target, status_code=303)


def summary(status: JobStatus) -> list[tuple[str, str]]:
    """What the steps produced, a line each: data, training, build, evaluation, registry, rollout."""
    a, rows = status.artifacts, []
    if data := a.get("dataset"):
        sites = ", ".join(f"{s} {n}" for s, n in sorted(data.get("sites", {}).items()))
        rows.append(
            (
                "data",
                f"{data['records']} labelled records ({sites}): {data['train']} train, "
                f"{data.get('validation', 0)} to validate, {data['heldout']} to test",
            )
        )
    if train := a.get("train"):
        if train.get("mode") == "federated":
            where = (
                f"on SuperLink {train.get('superlink')}, run {train.get('run_id')}"
                if train.get("engine") == "deployment"
                else "simulated in the worker"
            )
            rows.append(("training", f"federated, {train.get('rounds', 0)} rounds, {where}"))
        else:
            rows.append(
                (
                    "training",
                    f"{train['epochs']} epochs on {train['samples']} records, "
                    f"last loss {train['loss']:.4f}, {train['seconds']} s",
                )
            )
    if build := a.get("build"):
        targets = ", ".join(
            f"{t['target']} {t['accuracy'] * 100:.1f} % {t['size_bytes'] / 1024:.1f} KB"
            for t in build.get("targets", [])
            if t.get("accuracy") is not None
        )
        rows.append(
            ("build", f"{status.model_id}@{build['version']} from {build['parent'] or 'nothing'}: {targets}")
        )
    if ev := a.get("evaluate"):
        current = ev.get("production_accuracy")
        rows.append(
            (
                "evaluation",
                f"candidate {ev['candidate_accuracy'] * 100:.1f} % against production "
                + (f"{ev['production_version']} {current * 100:.1f} %" if current is not None else "(none)")
                + f" on {ev['heldout']} test records",
            )
        )
    if reg := a.get("register"):
        rows.append(
            ("registry", f"{status.model_id}@{reg['version']} as candidate, {len(reg['bundles'])} bundles")
        )
    if rollout := a.get("rollout"):
        rows.append(
            ("rollout", rollout.get("skipped") or f"{rollout['rollout_id']} to group {rollout['group']}")
        )
    return rows


def round_charts(rounds: Sequence[RoundPublic]) -> dict[str, Markup]:
    if not rounds:
        return {}

    def points(value: Callable[[RoundPublic], float | None]) -> list[tuple[float, float]]:
        return [(r.round, v) for r in rounds if (v := value(r)) is not None and math.isfinite(v)]

    return {
        "Loss per round (validation split, global model)": round_chart(
            [Series("loss", points(lambda r: r.loss), COLORS[1])], y_label="loss (cross-entropy)"
        ),
        "Accuracy per round (validation split, global model)": round_chart(
            [Series("accuracy", points(lambda r: r.accuracy), COLORS[2])],
            y_label="accuracy (%)",
            y_format=percent,
            y_range=(0.0, 1.0),
        ),
        "Clients per round": round_chart(
            [
                Series("sampled", points(lambda r: r.sampled), COLORS[0]),
                Series("responded", points(lambda r: r.responded), COLORS[2]),
                Series("failed", points(lambda r: r.failed), COLORS[1]),
                Series("declined", points(lambda r: r.declined), COLORS[4]),
            ],
            y_label="clients (count)",
        ),
    }


def round_chart(
    series: Sequence[Series],
    *,
    y_label: str,
    y_format: Callable[[float], str] = plain,
    y_range: tuple[float, float] | None = None,
    width: int = 640,
    height: int = 220,
) -> Markup:
    """Values per federated round: x axis the round number, y axis titled ``y_label`` (name and unit)."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x0, x1 = (min(xs), max(xs)) if xs else (1, 2)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y_range is None:
        high = max(ys, default=1.0)
        y0, y1 = min(0.0, min(ys, default=0.0)), (high * 1.1 if high > 0 else 1.0)
    else:
        y0, y1 = y_range
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (min(max(y, y0), y1) - y0) / (y1 - y0) * plot_h

    parts = [
        f'<svg class="chart round-chart" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(y_label)}">'
        f'<rect class="plot" x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="#f4f6f9"></rect>'
        f'<text class="axis-title" transform="translate(14,{_TOP + plot_h / 2:.0f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    ]
    for tick in _ticks(y0, y1):
        y = py(tick)
        parts.append(
            f'<line class="grid" x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            'stroke="#dde3ea"></line>' + _text(_LEFT - 6, y + 4, y_format(tick), "end")
        )
    step = max(1, math.ceil((x1 - x0) / 8))
    for tick in range(math.ceil(x0), int(x1) + 1, step):
        parts.append(
            f'<line class="tick" x1="{px(tick):.1f}" x2="{px(tick):.1f}" y1="{_TOP + plot_h}" '
            f'y2="{_TOP + plot_h + 4}" stroke="#1d2733"></line>'
            + _text(px(tick), _TOP + plot_h + 16, str(tick), "middle")
        )
    parts.append(_text(_LEFT + plot_w / 2, height - 6, "round", "middle", "axis-title"))
    for index, s in enumerate(series):
        coords = [(px(x), py(y)) for x, y in sorted(s.points)]
        if coords:
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(
                f'<polyline class="series" points="{line}" fill="none" stroke="{s.color}" '
                'stroke-width="2"></polyline>'
            )
            parts.extend(
                f'<circle class="dot" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.color}"></circle>'
                for x, y in coords
            )
        legend_x = _LEFT + 120 * index
        parts.append(
            f'<rect class="legend" x="{legend_x}" y="8" width="10" height="10" fill="{s.color}"></rect>'
            + _text(legend_x + 14, 17, s.name, "start")
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _text(x: float, y: float, text: str, anchor: str, css_class: str = "label") -> str:
    return f'<text class="{css_class}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{escape(text)}</text>'


def _ticks(low: float, high: float, most: int = 5) -> list[float]:
    span = (high - low) or 1.0
    magnitude = 10 ** math.floor(math.log10(span / most))
    step = next(m * magnitude for m in (1, 2, 5, 10) if span / (m * magnitude) <= most)
    first = math.ceil(low / step) * step
    count = math.floor((high - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(max(count, 1))]
