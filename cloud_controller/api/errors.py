"""The error responses routes publish: each status the code raises, with the body it sends."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorMessage(BaseModel):
    """An error the controller raises itself: what is wrong, in a sentence."""

    detail: str


_DESCRIPTIONS = {
    400: "The body cannot be read (e.g. not valid gzip)",
    401: "Missing, invalid, revoked or expired bearer token",
    403: "This token's role, or the site it is bound to, may not do this",
    404: "The resource, or one it refers to, does not exist",
    409: "Conflicts with what is stored (it exists already, or is archived)",
    413: "The body is larger than the controller accepts",
    415: "Content-Encoding is neither gzip nor identity",
    429: "Over this gateway token's ingest rate: nothing was stored; send again after Retry-After seconds",
    422: "The body is not what this route accepts; the detail names the field or the reason",
    503: "The database does not answer",
}

#: What every route behind a bearer token can answer.
AUTH = (401, 403)
#: What a route with a JSON body can answer besides: 400 when the body is not JSON at all (FastAPI's
#: own answer, before any field is validated).
BODY = (400,)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each with an `ErrorMessage` body.

    A 422 listed here replaces FastAPI's request-validation schema: list it only on routes whose
    parameters FastAPI does not validate (the body is read and checked by the route itself).
    """
    return {code: {"model": ErrorMessage, "description": _DESCRIPTIONS[code]} for code in codes}
