"""API tokens over the API: what an operator creates, lists and revokes (the template's family).

The table is `cloud_controller.models.ApiToken`. No model here carries the stored sha256; the
secret itself is only in `TokenCreated`, the answer to the request that makes it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_controller.models import TEXT_PATTERN, ApiToken, ResourceId, Role

#: A lifetime as the CLI's ``--expires-in`` takes it: a count of seconds, minutes, hours or days,
#: or ``never``.
LIFETIME_PATTERN = r"^(never|[1-9][0-9]{0,4}[smhd])$"
Lifetime = Annotated[str, StringConstraints(max_length=6, pattern=LIFETIME_PATTERN)]
TokenName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=TEXT_PATTERN)]
_EXPIRES_IN = (
    "How long the token lives: e.g. 30d, 12h, 90m, 3600s, or never. "
    "Default: 90d for viewer and operator tokens, 365d for gateway and device tokens."
)


class TokenState(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class TokenCreate(BaseModel):
    """A viewer, operator or device token: bound to no site."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["viewer", "operator", "device"]
    name: TokenName
    expires_in: Lifetime | None = Field(default=None, description=_EXPIRES_IN)


class GatewayTokenCreate(BaseModel):
    """A gateway token: it ingests for, and reads the desired state of, its one site."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["gateway"]
    name: TokenName
    site_id: ResourceId
    expires_in: Lifetime | None = Field(default=None, description=_EXPIRES_IN)


#: The body of ``POST /tokens``: which one by ``role``, so that the schema itself says that a
#: gateway token names its site.
AnyTokenCreate = Annotated[TokenCreate | GatewayTokenCreate, Field(discriminator="role")]


class TokenPublic(BaseModel):
    id: int
    name: str
    role: Role
    site_id: str | None
    created_at: float
    expires_at: float | None = Field(description="Unix time; null: never expires")
    revoked: bool
    last_used_at: float | None = Field(description="Last API request it authenticated (to the minute)")
    state: TokenState

    @classmethod
    def of(cls, token: ApiToken, now: float) -> TokenPublic:
        assert token.id is not None
        if token.revoked:
            state = TokenState.REVOKED
        elif token.expires_at is not None and token.expires_at <= now:
            state = TokenState.EXPIRED
        else:
            state = TokenState.ACTIVE
        return cls(
            id=token.id,
            name=token.name,
            role=token.role,
            site_id=token.site_id,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked=token.revoked,
            last_used_at=token.last_used_at,
            state=state,
        )


class TokensPublic(BaseModel):
    data: list[TokenPublic]
    count: int


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret: shown this once, stored as its sha256 only")
