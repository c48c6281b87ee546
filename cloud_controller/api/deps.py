"""Request dependencies: a database session, the caller, role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from cloud_controller.auth import authenticate
from cloud_controller.exceptions import TokenRejected
from cloud_controller.models import ID_PATTERN, MAX_ID, SHA256_PATTERN, TEXT_PATTERN, ApiToken, Role

_bearer = HTTPBearer(auto_error=False)


IntId = Annotated[int, Path(ge=1, le=MAX_ID)]
#: A site, device or gateway id in a path, or as a filter: the rule ids are created with, so that a
#: request for one that cannot exist is refused by its shape (422) before any query.
IdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
IdQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]
Sha256Path = Annotated[str, Path(min_length=64, max_length=64, pattern=SHA256_PATTERN)]


def text_query(max_length: int, description: str | None = None) -> Any:
    """A free-text filter: bounded, and without control characters (PostgreSQL's text holds no NUL)."""
    return Query(max_length=max_length, pattern=TEXT_PATTERN, description=description)


def get_db(request: Request) -> Iterator[Session]:
    with Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def current_token(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiToken:
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "Missing bearer token", {"WWW-Authenticate": "Bearer"}
        )
    try:
        token = authenticate(session=session, token=credentials.credentials)
    except TokenRejected as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), {"WWW-Authenticate": "Bearer"}) from None
    if token.role is Role.GATEWAY and not token.site_id:
        # Issued before gateway tokens had to name their site: it could ingest for any site.
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"Gateway token {token.name!r} names no site and may no longer be used: issue one bound to "
            "the gateway's site (cloud-controller admin create-token --role gateway --site SITE) "
            "and revoke this one",
        )
    return token


CurrentToken = Annotated[ApiToken, Depends(current_token)]


def allow(*roles: Role) -> Callable[[ApiToken], ApiToken]:
    """A dependency that lets only ``roles`` through (403 for any other valid token)."""

    def check(token: CurrentToken) -> ApiToken:
        if token.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"Role {token.role.value} may not do this")
        return token

    return check


Reader = Annotated[ApiToken, Depends(allow(Role.VIEWER, Role.OPERATOR))]
Operator = Annotated[ApiToken, Depends(allow(Role.OPERATOR))]
Gateway = Annotated[ApiToken, Depends(allow(Role.GATEWAY))]
