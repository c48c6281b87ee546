"""The operators' dashboard: server-rendered pages (Jinja2), charts as inline SVG, no build step.

A viewer or operator token is exchanged once for an HttpOnly cookie at ``/login``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func
from sqlmodel import Session, select

from cloud_controller.api.deps import IdPath, SessionDep
from cloud_controller.auth import lookup
from cloud_controller.models import ApiToken, Device, Drift, Event, ModelVersion, Role, Summary, Telemetry

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
COOKIE = "edgefleet_token"
#: Feature means shown per window summary on the device page: a glance, not the whole vector.
SUMMARY_MEANS = 3


def _viewer(session: Session, token: str | None) -> ApiToken:
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
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
    return response


@router.get("/", response_class=HTMLResponse)
def overview(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    _viewer(session, edgefleet_token)
    devices = session.exec(select(Device).order_by(Device.site_id, Device.id)).all()
    sites: dict[str, dict[str, int]] = {}
    versions: dict[str, int] = {}
    for d in devices:
        counts = sites.setdefault(d.site_id, {"online": 0, "offline": 0})
        counts["online" if d.online else "offline"] += 1
        key = f"{d.model_id}@{d.model_version}" if d.model_id else "none"
        versions[key] = versions.get(key, 0) + 1
    return templates.TemplateResponse(
        request, "overview.html", {"devices": devices, "sites": sites, "versions": _bars(versions)}
    )


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(
    request: Request,
    session: SessionDep,
    device_id: IdPath,
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    _viewer(session, edgefleet_token)
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
    _viewer(session, edgefleet_token)
    versions = session.exec(select(ModelVersion).order_by(ModelVersion.model_id, ModelVersion.id)).all()
    return templates.TemplateResponse(request, "registry.html", {"versions": versions})


@router.get("/drift", response_class=HTMLResponse)
def drift_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    _viewer(session, edgefleet_token)
    rows = session.exec(select(Drift).order_by(Drift.model_id, Drift.window_start)).all()
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.score is not None:
            # One chart per scoring method: PSI and mean-shift scores are on different scales.
            name = f"{row.model_id}@{row.model_version} ({row.score_method or 'mean_shift'})"
            series.setdefault(name, []).append((row.window_start, row.score))
    charts = {name: _line(points) for name, points in series.items()}
    total = session.exec(select(func.count()).select_from(Drift)).one()
    return templates.TemplateResponse(request, "drift.html", {"charts": charts, "total": total})


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


def _bars(values: dict[str, int]) -> list[dict[str, Any]]:
    top = max(values.values(), default=1)
    return [{"label": k, "value": v, "width": round(300 * v / top)} for k, v in sorted(values.items())]


def _line(points: list[tuple[float, float]], width: int = 480, height: int = 120) -> str:
    """An SVG polyline of (time, value) points, scaled to the box."""
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(ys), max(ys)
    span_x, span_y = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    coords = " ".join(
        f"{(x - x0) / span_x * (width - 20) + 10:.1f},{height - 10 - (y - y0) / span_y * (height - 20):.1f}"
        for x, y in points
    )
    return coords
