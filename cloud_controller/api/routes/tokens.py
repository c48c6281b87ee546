"""API tokens, for operators: list, create (the secret is answered once), revoke."""

from __future__ import annotations

import time

from fastapi import APIRouter, HTTPException
from sqlmodel import col, select

from cloud_controller.api.deps import IntId, Operator, SessionDep
from cloud_controller.api.errors import AUTH, BODY, errors
from cloud_controller.auth import issue_token, parse_lifetime, revoke_token
from cloud_controller.exceptions import Invalid
from cloud_controller.models import ApiToken, Role
from cloud_controller.token_models import (
    AnyTokenCreate,
    GatewayTokenCreate,
    TokenCreated,
    TokenPublic,
    TokensPublic,
)

router = APIRouter(prefix="/tokens", tags=["tokens"], responses=errors(*AUTH))


@router.get("", response_model=TokensPublic)
def list_tokens(session: SessionDep, _: Operator) -> TokensPublic:
    """Every token, oldest first, with its state; never its secret."""
    now = time.time()
    rows = session.exec(select(ApiToken).order_by(col(ApiToken.id))).all()
    return TokensPublic(data=[TokenPublic.of(t, now) for t in rows], count=len(rows))


@router.post("", response_model=TokenCreated, status_code=201, responses=errors(*BODY))
def create_token(session: SessionDep, caller: Operator, body: AnyTokenCreate) -> TokenCreated:
    """Create a token; the answer carries its secret, which is not kept and cannot be shown again."""
    site = body.site_id if isinstance(body, GatewayTokenCreate) else None
    try:
        lifetime = None if body.expires_in is None else parse_lifetime(body.expires_in)
        row, secret = issue_token(
            session=session,
            name=body.name,
            role=Role(body.role),
            site_id=site,
            expires_in_s=lifetime,
            actor=caller,
        )
    except Invalid as exc:  # the body's schema leaves nothing to refuse here; kept for safety
        raise HTTPException(422, str(exc)) from None
    return TokenCreated(**TokenPublic.of(row, time.time()).model_dump(), token=secret)


@router.delete("/{token_id}", response_model=TokenPublic, responses=errors(404, 409))
def delete_token(session: SessionDep, caller: Operator, token_id: IntId) -> TokenPublic:
    """Revoke a token for good (again: unchanged); the token making the request cannot revoke itself."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise HTTPException(404, "Token not found")
    if token.id == caller.id:
        raise HTTPException(
            409,
            "A token cannot revoke itself: use another operator token, or `cloud-controller admin "
            "revoke-token` on the controller's host",
        )
    revoke_token(session=session, token=token, actor=caller)
    return TokenPublic.of(token, time.time())
