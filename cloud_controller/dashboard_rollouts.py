"""The dashboard's rollout pages: the list, and one rollout with its waves, gates, decisions and charts.

Operators get pause / resume / abort buttons; the actions go through `cloud_controller.rollouts`,
as the API's do, and are audited under the operator's token.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Cookie, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlmodel import Session, col, select

from cloud_controller import rollouts
from cloud_controller.api.deps import SessionDep
from cloud_controller.audit import who
from cloud_controller.charts import COLORS, Series, Threshold, percent, time_chart
from cloud_controller.dashboard import signed_in, templates
from cloud_controller.exceptions import Conflict, NotFound
from cloud_controller.models import Event, Role
from cloud_controller.rollout_models import ROLLOUT_ID_PATTERN, Rollout, RolloutStatus

router = APIRouter(include_in_schema=False)
RolloutId = Annotated[str, Path(pattern=ROLLOUT_ID_PATTERN)]
_FAILED = ("ota.rolled_back", "ota.refused")


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(
    request: Request, session: SessionDep, edgefleet_token: Annotated[str | None, Cookie()] = None
) -> Response:
    signed_in(session, edgefleet_token)
    rows = session.exec(select(Rollout).order_by(col(Rollout.created_at).desc())).all()
    return templates.TemplateResponse(request, "rollouts.html", {"rollouts": rows})


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
def rollout_page(
    request: Request,
    session: SessionDep,
    rollout_id: RolloutId,
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    caller = signed_in(session, edgefleet_token)
    try:
        rollout = rollouts.get(session, rollout_id)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    status = rollouts.status(session, rollout)
    return templates.TemplateResponse(
        request,
        "rollout.html",
        {
            "r": status,
            "gates": _gate_rows(status),
            "charts": _charts(session, status),
            "operator": caller.role is Role.OPERATOR,
            "error": request.query_params.get("error"),
        },
    )


@router.post("/rollouts/{rollout_id}/{action}")
def rollout_action(
    session: SessionDep,
    rollout_id: RolloutId,
    action: Literal["pause", "resume", "abort"],
    edgefleet_token: Annotated[str | None, Cookie()] = None,
) -> Response:
    caller = signed_in(session, edgefleet_token)
    if caller.role is not Role.OPERATOR:
        raise HTTPException(403, f"Role {caller.role.value} may not do this")
    operate = {"pause": rollouts.pause, "resume": rollouts.resume, "abort": rollouts.abort}[action]
    target = f"/rollouts/{rollout_id}"
    try:
        operate(session=session, rollout_id=rollout_id, actor=who(caller))
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except Conflict as exc:
        return RedirectResponse(f"{target}?error={exc}", status_code=303)
    return RedirectResponse(target, status_code=303)


def _gate_rows(status: RolloutStatus) -> list[dict[str, Any]]:
    """The current wave's gate values against their thresholds, each passing or not."""
    wave = status.waves[status.current_wave]
    values, gates = wave.gates, status.gates
    if values is None:
        return []

    def row(name: str, value: Any, rule: str, ok: bool | None) -> dict[str, Any]:
        return {"name": name, "value": value, "rule": rule, "ok": ok}

    ratio = values.latency_ratio
    return [
        row(
            "installed",
            percent(values.installed),
            f">= {percent(gates.min_installed)} to advance",
            values.installed >= gates.min_installed,
        ),
        row(
            "failed",
            percent(values.failed),
            f"<= {percent(gates.max_failed)}",
            values.failed <= gates.max_failed,
        ),
        row(
            "shadow agreement",
            percent(values.agreement) if values.agreement is not None else "no shadow figures",
            f">= {percent(gates.min_agreement)}",
            None if values.agreement is None else values.agreement >= gates.min_agreement,
        ),
        row(
            "latency ratio (challenger / champion p95)",
            f"{ratio:.2f}x" if ratio is not None else "no shadow figures",
            f"<= {gates.max_latency_ratio:.2f}x" if gates.max_latency_ratio is not None else "no limit",
            None if ratio is None or gates.max_latency_ratio is None else ratio <= gates.max_latency_ratio,
        ),
        row("non-finite outputs", values.non_finite, "= 0", values.non_finite == 0),
    ]


def _charts(session: Session, status: RolloutStatus) -> dict[str, Any]:
    """Installed and failed shares over time from the devices' ota.* events, and per-device shadow
    figures, with the gates' thresholds drawn and each wave's start marked."""
    starts = [(w.started_at, w.target) for w in status.waves if w.started_at is not None]
    markers = [(at, f"wave {i}") for i, (at, _) in enumerate(starts)]
    events = session.exec(
        select(Event.device_id, Event.ts, Event.kind, Event.data)
        .where(Event.rollout_id == status.id)
        .order_by(col(Event.ts))
    ).all()
    installed: list[tuple[float, float]] = [(starts[0][0], 0.0)] if starts else []
    failed = list(installed)
    seen: dict[str, set[str]] = {"promoted": set(), "failed": set()}
    agreement: list[tuple[float, float]] = []
    latency: list[tuple[float, float]] = []
    for device_id, ts, kind, data in events:
        target = next((t for at, t in reversed(starts) if at <= ts), starts[0][1] if starts else 0) or 1
        if kind == "ota.promoted" and device_id not in seen["promoted"]:
            seen["promoted"].add(device_id)
            installed.append((ts, len(seen["promoted"]) / target))
        elif kind in _FAILED and device_id not in seen["failed"]:
            seen["failed"].add(device_id)
            failed.append((ts, len(seen["failed"]) / target))
        shadow = data.get("shadow") if isinstance(data, dict) else None
        if shadow and shadow.get("samples"):
            if shadow.get("agreement") is not None:
                agreement.append((ts, shadow["agreement"]))
            champion = (shadow.get("champion") or {}).get("p95_latency_ms")
            challenger = (shadow.get("challenger") or {}).get("p95_latency_ms")
            if champion and challenger is not None:
                latency.append((ts, challenger / champion))
    gates = status.gates
    charts = {
        "Devices promoted and failed, share of the wave's target": time_chart(
            [Series("promoted", installed, COLORS[2]), Series("rolled back or refused", failed, COLORS[1])],
            y_label="devices (% of target)",
            y_format=percent,
            y_range=(0.0, 1.0),
            thresholds=[
                Threshold(gates.min_installed, "min installed"),
                Threshold(gates.max_failed, "max failed"),
            ],
            markers=markers,
            css_class="chart rollout-chart",
        )
    }
    if status.shadow_s > 0 or agreement:
        charts["Shadow agreement, per device report"] = time_chart(
            [Series("agreement", agreement, COLORS[0], dots=True)],
            y_label="agreement (%)",
            y_format=percent,
            y_range=(0.0, 1.0),
            thresholds=[Threshold(gates.min_agreement, "min agreement")],
            markers=markers,
            css_class="chart rollout-chart",
        )
    if status.shadow_s > 0 or latency:
        limit = (
            [Threshold(gates.max_latency_ratio, "max ratio")] if gates.max_latency_ratio is not None else []
        )
        charts["Latency, challenger p95 over champion p95, per device report"] = time_chart(
            [Series("latency ratio", latency, COLORS[3], dots=True)],
            y_label="latency ratio (x)",
            y_format=lambda v: f"{v:.2g}x",
            thresholds=limit,
            markers=markers,
            css_class="chart rollout-chart",
        )
    return charts
