"""The operators' dashboard: server-rendered pages (Jinja2), charts as inline SVG, no build step.

A viewer or operator token is exchanged once for an HttpOnly cookie at ``/login``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session, col, select

from cloud_controller.api.deps import IdPath, SessionDep
from cloud_controller.auth import lookup
from cloud_controller.charts import COLORS, Series, Threshold, bar_chart, time_chart
from cloud_controller.metrics import drift_keys
from cloud_controller.models import ApiToken, Device, Drift, Event, ModelVersion, Role, Summary, Telemetry

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
COOKIE = "edgefleet_token"
#: Feature means shown per window summary on the device page: a glance, not the whole vector.
SUMMARY_MEANS = 3
#: Drift windows drawn per model version and site: the latest ones (four hours of minute windows).
DRIFT_POINTS = 240
#: The population stability index above which a shift is significant (the usual rule of thumb).
PSI_SIGNIFICANT = 0.25


def signed_in(session: Session, token: str | None) -> ApiToken:
    """The dashboard's caller (viewer or operator), or a redirect to /login."""
    found = lookup(session=session, token=token) if token else None
    if found is None or found.role not in (Role.VIEWER, Role.OPERATOR):
        raise HTTPException(303, headers={"Location": "/login"})
    return found


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    return templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login")
def login(request: Request, session: SessionDep, token: Annotated[str, Form()]) -> Response:
    found = lookup(session=session, token=token)
    if found is None or found.role not in (Role.VIEWER, Role.OPERATOR):
        return templates.TemplateResponse(
            request, "login.html", {"error": "Token not valid for the dashboard"}, status_code=401
        )
    response = RedirectResponse("/", status_code=303)
    # Secure over TLS: the browser then never sends the token over plain HTTP.
    secure = request.url.scheme == "https"
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure)
    return response


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    signed_in(session, edgefleet_token)
    devices = session.exec(select(Device).order_by(Device.site_id, Device.id)).all()
    sites: dict[str, dict[str, int]] = {}
    versions: dict[str, int] = {}
    for d in devices:
        counts = sites.setdefault(d.site_id, {"online": 0, "offline": 0})
        counts["online" if d.online else "offline"] += 1
        key = f"{d.model_id}@{d.model_version}" if d.model_id else "none"
        versions[key] = versions.get(key, 0) + 1
    chart = bar_chart(
        sorted(versions.items()), x_label="devices running the version (count)", element_id="versions-chart"
    )
    return templates.TemplateResponse(
        request, "overview.html", {"devices": devices, "sites": sites, "versions": chart}
    )


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    session: SessionDep,
    device_id: IdPath,
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    signed_in(session, edgefleet_token)
    device = session.get(Device, device_id)
    if device is None:
        raise HTTPException(404, "Device not found")
    recent = session.exec(
        select(Telemetry).where(Telemetry.device_id == device_id).order_by(Telemetry.seq.desc()).limit(20)  # type: ignore[attr-defined]
    ).all()
    events = session.exec(
        select(Event).where(Event.device_id == device_id).order_by(Event.ts.desc()).limit(20)  # type: ignore[attr-defined]
    ).all()
    summaries = session.exec(
        select(Summary)
        .where(Summary.device_id == device_id)
        .order_by(Summary.window_start.desc(), Summary.first_seq.desc())  # type: ignore[attr-defined]
        .limit(20)
    ).all()
    return templates.TemplateResponse(
        request,
        "device.html",
        {
            "device": device,
            "recent": recent,
            "events": events,
            "summaries": [_summary_view(s) for s in summaries],
        },
    )


@router.get("/registry", response_class=HTMLResponse)
def registry_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    signed_in(session, edgefleet_token)
    versions = session.exec(select(ModelVersion).order_by(ModelVersion.model_id, ModelVersion.id)).all()
    return templates.TemplateResponse(request, "registry.html", {"versions": versions})


@router.get("/drift", response_class=HTMLResponse)
def drift_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    signed_in(session, edgefleet_token)
    # The latest windows of each model version at each site, by index: what the charts draw, not
    # every window stored (a million rows took seconds to read).
    lines: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    window = col(Drift.window_start)
    for site, model, version in list(drift_keys(session)):
        rows = session.exec(
            select(window, Drift.score, Drift.score_method)
            .where(Drift.site_id == site, Drift.model_id == model, Drift.model_version == version)
            .order_by(window.desc())
            .limit(DRIFT_POINTS)
        ).all()
        for start, score, method in rows:
            if score is not None:
                # One chart per scoring method: PSI and mean-shift scores are on different scales.
                chart = lines.setdefault((f"{model}@{version}", method or "mean_shift"), {})
                chart.setdefault(site, []).append((start, score))
    charts = {
        f"{name} ({method})": _drift_chart(method, by_site)
        for (name, method), by_site in sorted(lines.items())
    }
    return templates.TemplateResponse(request, "drift.html", {"charts": charts, "points": DRIFT_POINTS})


def _drift_chart(method: str, by_site: dict[str, list[tuple[float, float]]]) -> Any:
    """One line per site; PSI with its significance threshold, mean shift in standard deviations."""
    series = [
        Series(site, points, COLORS[i % len(COLORS)])
        for i, (site, points) in enumerate(sorted(by_site.items()))
    ]
    if method == "psi":
        return time_chart(
            series,
            y_label="PSI (dimensionless)",
            thresholds=[Threshold(PSI_SIGNIFICANT, "significant shift")],
            css_class="drift-chart",
        )
    return time_chart(series, y_label="mean shift (std devs)", css_class="drift-chart")


def _summary_view(row: Summary) -> dict[str, Any]:
    """A window summary's table cells: window, counts and the first few feature means by name."""
    means = row.summary.get("mean", [])[:SUMMARY_MEANS]
    names = row.summary.get("feature_names") or [f"f{i}" for i in range(len(means))]
    return {
        "window": f"{row.window_start:.0f} - {row.window_end:.0f}",
        "seqs": f"{row.first_seq} - {row.last_seq}",
        "count": row.count,
        "anomalies": row.anomalies,
        "forwarded": row.forwarded,
        "means": ", ".join(f"{n}={m:.3g}" for n, m in zip(names, means, strict=False)),
    }
