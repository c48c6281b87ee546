"""The dashboard's alarms and accuracy pages.

Alarms: the open ones and the latest resolved, each with its value against its threshold, and the
models' policies; an operator starts a retraining or a federated job for an open alarm without
one (through `cloud_controller.jobs`, as the API's ``POST /api/v1/alarms/{id}/job``). Accuracy:
per model and site, accuracy over time from labels (one line per version), with the policy's
floor drawn.
"""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Cookie, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import col, select

from cloud_controller import accuracy, alarms, jobs
from cloud_controller.api.deps import IntId, SessionDep
from cloud_controller.audit import who
from cloud_controller.charts import COLORS, Series, Threshold, percent, time_chart
from cloud_controller.dashboard import signed_in, templates
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.job_models import JobKind
from cloud_controller.label_models import Alarm, AlarmPolicy
from cloud_controller.models import ModelVersion, Role

router = APIRouter(include_in_schema=False)
#: Resolved alarms listed: the latest ones.
RESOLVED_SHOWN = 50
#: Accuracy windows drawn per model and site.
ACCURACY_POINTS = 240


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    caller = signed_in(session, edgefleet_token)
    opened = session.exec(
        select(Alarm).where(col(Alarm.resolved_at).is_(None)).order_by(col(Alarm.fired_at).desc())
    ).all()
    resolved = session.exec(
        select(Alarm)
        .where(col(Alarm.resolved_at).is_not(None))
        .order_by(col(Alarm.resolved_at).desc())
        .limit(RESOLVED_SHOWN)
    ).all()
    policies = session.exec(select(AlarmPolicy).order_by(AlarmPolicy.model_id)).all()
    return templates.TemplateResponse(
        request,
        "alarms.html",
        {
            "open": [_alarm_view(a) for a in opened],
            "resolved": [_alarm_view(a) for a in resolved],
            "policies": policies,
            "default": alarms.DEFAULT,
            "shown": RESOLVED_SHOWN,
            "operator": caller.role is Role.OPERATOR,
            "error": request.query_params.get("error"),
        },
    )


@router.post("/alarms/{alarm_id}/job")
def alarm_job(
    session: SessionDep,
    alarm_id: IntId,
    kind: Annotated[JobKind, Form()],
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    """Start a job of ``kind`` for the alarm (the policy's scope, default params) and show it; what
    refuses it (resolved, a job already, no training recipe) is shown on the alarms page."""
    caller = signed_in(session, edgefleet_token)
    if caller.role is not Role.OPERATOR:
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
    try:
        job = jobs.start_for_alarm(session=session, alarm_id=alarm_id, kind=kind, actor=who(caller))
    except (NotFound, Conflict) as exc:
        return RedirectResponse(f"/alarms?{urlencode({'error': str(exc)})}", status_code=303)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def _alarm_view(alarm: Alarm) -> dict[str, Any]:
    """Values as their kind reads: accuracy in percent against a floor, PSI against a ceiling."""
    fmt = percent if alarm.kind == "accuracy" else (lambda v: f"{v:.3f}")
    relation = "<" if alarm.kind == "accuracy" else ">"
    return {
        "alarm": alarm,
        "value": fmt(alarm.value),
        "last": fmt(alarm.last_value),
        "rule": f"{relation} {fmt(alarm.threshold)}",
        "version": alarm.version or "—",
    }


@router.get("/accuracy", response_class=HTMLResponse)
def accuracy_page(
    request: Request,
    session: SessionDep,
    window_s: Annotated[int, Query(ge=10, le=86_400)] = 300,
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    signed_in(session, edgefleet_token)
    since = time.time() - ACCURACY_POINTS * window_s
    models = sorted(
        {*session.exec(select(ModelVersion.model_id).distinct()).all()}
        | {t.model_id for t in accuracy.tallies(session=session, since=since)}
    )
    charts: dict[str, Any] = {}
    for model in models:
        floor = alarms.policy_of(session, model).accuracy_floor
        by_site: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for w in accuracy.windows(
            session=session, model_id=model, window_s=window_s, since=since, limit=5000
        ):
            # A point at the window's middle: the records it counts surround it.
            by_site.setdefault(w.site_id, {}).setdefault(w.version, []).append(
                ((w.window_start + w.window_end) / 2, w.accuracy)
            )
        for site, by_version in sorted(by_site.items()):
            series = [
                # A single window is a dot: a line of one point does not show.
                Series(version, points, COLORS[i % len(COLORS)], dots=len(points) < 2)
                for i, (version, points) in enumerate(sorted(by_version.items()))
            ]
            charts[f"{model} at {site}"] = time_chart(
                series,
                y_label="accuracy (% of labelled records)",
                y_format=percent,
                y_range=(0.0, 1.0),
                thresholds=[Threshold(floor, "alarm floor")] if floor is not None else [],
                css_class="accuracy-chart",
            )
    return templates.TemplateResponse(
        request, "accuracy.html", {"charts": charts, "window_s": window_s, "points": ACCURACY_POINTS}
    )
