"""Request dependencies: a database session, the caller, role checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from cloud_controller.auth import authenticate
from cloud_controller.client_cert import CertificateRefused, ClientCertAuth, client_cert_der
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
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiToken:
    """The caller's token; without one, a gateway's fleet client certificate (`client_cert`)."""
    if credentials is None:
        by_certificate = _certificate_caller(request)
        if by_certificate is not None:
            return by_certificate
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


def _certificate_caller(request: Request) -> ApiToken | None:
    """An unsaved gateway token for the client's certificate; None when it showed none.

    ``app.state.client_certs`` is set by ``serve`` when ``tls_client_ca`` is; a certificate in the
    scope without it (never, short of another server) is not looked at.
    """
    der = client_cert_der(request.scope)
    checker: ClientCertAuth | None = getattr(request.app.state, "client_certs", None)
    if der is None or checker is None:
        return None
    try:
        return checker.caller(der)
    except CertificateRefused as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, str(exc), headers) from None


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
