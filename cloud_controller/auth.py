"""Bearer tokens with roles and lifetimes. Only a token's sha256 is stored; the token is shown once.

Every token is created, and revoked, here: from the CLI and from the API alike, each with its
audit entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time

from sqlmodel import Session, col, select

from cloud_controller import audit
from cloud_controller.exceptions import Conflict, Invalid, NotFound, TokenRejected
from cloud_controller.models import ApiToken, Role

DAY_S = 86400.0
#: A lifetime that never ends: ``expires_at`` stays NULL.
NEVER = math.inf
#: How long a token lives unless its creator says: people's tokens are re-issued each quarter,
#: machines' (gateways, devices) once a year.
DEFAULT_LIFETIME_S = {
    Role.VIEWER: 90 * DAY_S,
    Role.OPERATOR: 90 * DAY_S,
    Role.GATEWAY: 365 * DAY_S,
    Role.DEVICE: 365 * DAY_S,
}
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}
#: ``last_used_at`` is written at most this often per token: a write per request would be one
#: more transaction on every ingest.
_TOUCH_EVERY_S = 60.0
#: Who created or revoked a token outside the API (the admin CLI, the simulators).
LOCAL_ACTOR = "admin"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_lifetime(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` -> seconds; ``never`` -> `NEVER`."""
    text = text.strip().lower()
    if text == "never":
        return NEVER
    unit = _UNITS.get(text[-1:])
    if unit is None or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise Invalid(f"Lifetime {text!r} is not a count of s, m, h or d (e.g. 30d, 12h) or 'never'")
    return int(text[:-1]) * unit


def issue_token(
    *,
    session: Session,
    name: str,
    role: Role,
    site_id: str | None = None,
    expires_in_s: float | None = None,
    actor: ApiToken | str = LOCAL_ACTOR,
    now: float | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token and return it with its secret in clear (the only time it exists in clear).

    ``expires_in_s``: None for the role's default (`DEFAULT_LIFETIME_S`), `NEVER` for none.
    """
    if role is Role.GATEWAY and not site_id:
        raise Invalid(
            "A gateway token must name its site (--site, or site_id): it may ingest for that site only"
        )
    if role is not Role.GATEWAY and site_id:
        raise Invalid(f"Only gateway tokens are bound to a site; a {role.value} token takes no site")
    lifetime = DEFAULT_LIFETIME_S[role] if expires_in_s is None else expires_in_s
    if not lifetime > 0:
        raise Invalid(f"A token's lifetime must be positive, got {lifetime} s")
    now = time.time() if now is None else now
    secret = f"ef_{role.value}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        name=name,
        role=role,
        site_id=site_id,
        token_sha256=hash_token(secret),
        created_at=now,
        expires_at=None if math.isinf(lifetime) else now + lifetime,
    )
    session.add(row)
    session.flush()  # its id, for the audit entry
    audit.record(
        session=session, actor=actor, action="create", resource=f"token/{row.id}", after=_public(row)
    )
    session.commit()
    session.refresh(row)
    return row, secret


def create_token(
    *,
    session: Session,
    name: str,
    role: Role,
    site_id: str | None = None,
    expires_in_s: float | None = None,
    now: float | None = None,
) -> str:
    """`issue_token` for callers that need only the secret (the admin CLI, the simulators)."""
    return issue_token(
        session=session, name=name, role=role, site_id=site_id, expires_in_s=expires_in_s, now=now
    )[1]


def find_token(*, session: Session, id_or_name: str) -> ApiToken:
    """A token by id, or by name when that name is unique among the unrevoked ones."""
    if id_or_name.isdigit():
        found = session.get(ApiToken, int(id_or_name))
        if found is not None:
            return found
    named = session.exec(
        select(ApiToken).where(ApiToken.name == id_or_name, col(ApiToken.revoked).is_(False))
    ).all()
    if not named:
        raise NotFound(f"No unrevoked token has the id or name {id_or_name!r}")
    if len(named) > 1:
        ids = ", ".join(str(t.id) for t in named)
        raise Conflict(f"{len(named)} unrevoked tokens are named {id_or_name!r} (ids {ids}): revoke by id")
    return named[0]


def revoke_token(*, session: Session, token: ApiToken, actor: ApiToken | str = LOCAL_ACTOR) -> bool:
    """Revoke ``token`` for good; False when it was revoked already (nothing changes then)."""
    if token.revoked:
        return False
    before = _public(token)
    token.revoked = True
    session.add(token)
    audit.record(
        session=session,
        actor=actor,
        action="revoke",
        resource=f"token/{token.id}",
        before=before,
        after=_public(token),
    )
    session.commit()
    session.refresh(token)
    return True


def lookup(*, session: Session, token: str) -> ApiToken | None:
    """The token if it may be used now: known, not revoked, not expired."""
    try:
        return authenticate(session=session, token=token, touch=False)
    except TokenRejected:
        return None


def authenticate(*, session: Session, token: str, now: float | None = None, touch: bool = True) -> ApiToken:
    """The stored token, or `TokenRejected` saying whether it is unknown, revoked or expired.

    ``touch``: write ``last_used_at`` (at most once a minute).
    """
    found = session.exec(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token))).first()
    if found is None:
        raise TokenRejected("Invalid or revoked token")
    if found.revoked:
        raise TokenRejected("Token revoked: ask an operator for a new one")
    now = time.time() if now is None else now
    if found.expires_at is not None and found.expires_at <= now:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(found.expires_at))
        raise TokenRejected(f"Token expired at {when}: ask an operator for a new one")
    if touch and (found.last_used_at is None or now - found.last_used_at >= _TOUCH_EVERY_S):
        found.last_used_at = now
        session.add(found)
        session.commit()
        session.refresh(found)
    return found


def _public(token: ApiToken) -> dict[str, object]:
    """A token as the audit log keeps it: everything but its sha256."""
    return token.model_dump(mode="json", exclude={"token_sha256"})
