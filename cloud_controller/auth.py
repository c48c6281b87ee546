"""Bearer tokens with roles. Only a token's sha256 is stored; the token is shown once."""

from __future__ import annotations

import hashlib
import secrets

from sqlmodel import Session, select

from cloud_controller.models import ApiToken, Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, session: Session, name: str, role: Role, site_id: str | None = None) -> str:
    """Store a new token and return it in clear (the only time it exists in clear)."""
    token = f"ef_{role.value}_{secrets.token_urlsafe(32)}"
    session.add(ApiToken(name=name, role=role, site_id=site_id, token_sha256=hash_token(token)))
    session.commit()
    return token


def lookup(*, session: Session, token: str) -> ApiToken | None:
    found = session.exec(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token))).first()
    return found if found is not None and not found.revoked else None
