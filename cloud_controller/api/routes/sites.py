"""Sites."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlmodel import func, select

from cloud_controller import audit
from cloud_controller.api.deps import MAX_ID, IdPath, IdQuery, Operator, Reader, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.models import (
    Gateway,
    GatewayCreate,
    GatewayPublic,
    GatewaysPublic,
    GatewayUpdate,
    Site,
    SiteCreate,
    SitePublic,
    SitesPublic,
    SiteUpdate,
)

router = APIRouter(prefix="/sites", tags=["fleet"], responses=errors(*AUTH))
gateways = APIRouter(prefix="/gateways", tags=["fleet"], responses=errors(*AUTH))


@router.get("", response_model=SitesPublic)
def list_sites(
    session: SessionDep,
    _: Reader,
    skip: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> SitesPublic:
    """List sites."""
    count = session.exec(select(func.count()).select_from(Site)).one()
    rows = session.exec(select(Site).order_by(Site.id).offset(skip).limit(limit)).all()
    return SitesPublic(data=[SitePublic.model_validate(r) for r in rows], count=count)


@router.post("", response_model=SitePublic, status_code=201, responses=errors(*BODY, 409))
def create_site(session: SessionDep, caller: Operator, body: SiteCreate) -> Site:
    """Create a site."""
    if session.get(Site, body.id) is not None:
        raise HTTPException(409, "Site already exists")
    site = Site.model_validate(body)
    session.add(site)
    audit.record(
        session=session, actor=caller, action="create", resource=f"site/{site.id}", after=audit.snapshot(site)
    )
    session.commit()
    session.refresh(site)
    return site


@router.get("/{site_id}", response_model=SitePublic, responses=errors(404))
def get_site(session: SessionDep, _: Reader, site_id: IdPath) -> Site:
    """Get a site."""
    site = session.get(Site, site_id)
    if site is None:
        raise HTTPException(404, "Site not found")
    return site


@router.patch("/{site_id}", response_model=SitePublic, responses=errors(*BODY, 404))
def update_site(session: SessionDep, caller: Operator, site_id: IdPath, body: SiteUpdate) -> Site:
    """Update a site."""
    site = session.get(Site, site_id)
    if site is None:
        raise HTTPException(404, "Site not found")
    before = audit.snapshot(site)
    site.sqlmodel_update(body.model_dump(exclude_unset=True, exclude_none=True))
    audit.record(
        session=session,
        actor=caller,
        action="update",
        resource=f"site/{site_id}",
        before=before,
        after=audit.snapshot(site),
    )
    session.commit()
    session.refresh(site)
    return site


@gateways.get("", response_model=GatewaysPublic)
def list_gateways(session: SessionDep, _: Reader, site_id: IdQuery = None) -> GatewaysPublic:
    """List gateways, optionally of one site, with when each last uploaded."""
    query = select(Gateway)
    if site_id is not None:
        query = query.where(Gateway.site_id == site_id)
    rows = session.exec(query.order_by(Gateway.id)).all()
    return GatewaysPublic(data=[GatewayPublic.model_validate(g) for g in rows], count=len(rows))


@gateways.post("", response_model=GatewayPublic, status_code=201, responses=errors(*BODY, 404, 409))
def create_gateway(session: SessionDep, caller: Operator, body: GatewayCreate) -> Gateway:
    """Register a gateway at a site (gateways that upload are registered by themselves too)."""
    if session.get(Site, body.site_id) is None:
        raise HTTPException(404, "Site not found")
    if session.get(Gateway, body.id) is not None:
        raise HTTPException(409, "Gateway already exists")
    gateway = Gateway.model_validate(body)
    session.add(gateway)
    audit.record(
        session=session,
        actor=caller,
        action="create",
        resource=f"gateway/{gateway.id}",
        after=audit.snapshot(gateway),
    )
    session.commit()
    session.refresh(gateway)
    return gateway


@gateways.get("/{gateway_id}", response_model=GatewayPublic, responses=errors(404))
def get_gateway(session: SessionDep, _: Reader, gateway_id: IdPath) -> Gateway:
    """Get a gateway."""
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        raise HTTPException(404, "Gateway not found")
    return gateway


@gateways.patch("/{gateway_id}", response_model=GatewayPublic, responses=errors(*BODY, 404))
def update_gateway(session: SessionDep, caller: Operator, gateway_id: IdPath, body: GatewayUpdate) -> Gateway:
    """Rename a gateway."""
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        raise HTTPException(404, "Gateway not found")
    before = audit.snapshot(gateway)
    gateway.sqlmodel_update(body.model_dump(exclude_unset=True, exclude_none=True))
    audit.record(
        session=session,
        actor=caller,
        action="update",
        resource=f"gateway/{gateway_id}",
        before=before,
        after=audit.snapshot(gateway),
    )
    session.commit()
    session.refresh(gateway)
    return gateway
