"""Bearer-token authentication with two roles: viewers read scores and ids, reviewers also read text and review flags.

Only the SHA-256 digest of each token is configured (api.tokens). A presented
token is hashed and compared with every configured digest in constant time.
Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from monitor.api.schemas import ErrorResponse
from monitor.settings import ApiToken

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
# 32 random bytes, URL-safe base64: 43 characters.
TOKEN_BYTES = 32
BEARER_CHALLENGE = 'Bearer realm="sentinel-monitor"'
NO_TOKENS_MESSAGE = (
    "no API tokens are configured, so the API rejects every data request; create a token with "
    "`sentinel-monitor api token --name NAME --role viewer|reviewer` and add the [[api.tokens]] table it prints "
    "to the configuration file"
)

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token made by `sentinel-monitor api token`, sent as `Authorization: Bearer TOKEN`.",
)


@dataclass(frozen=True)
class Principal:
    """The caller of a request: the configured token's name and role."""

    name: str
    role: str

    @property
    def is_reviewer(self) -> bool:
        return self.role == "reviewer"


def new_token() -> str:
    """Return a new random token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> str:
    """Return the hex SHA-256 digest of a token, the form api.tokens stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def find_principal(tokens: Sequence[ApiToken], presented: str) -> Principal | None:
    """Return the principal whose digest matches the presented token, or None.

    Every configured digest is compared, with hmac.compare_digest, so the time
    taken does not tell which entry matched.
    """
    digest = token_digest(presented)
    match: ApiToken | None = None
    for token in tokens:
        if hmac.compare_digest(digest, token.sha256.lower()):
            match = token
    return Principal(name=match.name, role=match.role) if match else None


def require_viewer(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
) -> Principal:
    """Authenticate the request with any configured token; 401 without one."""
    tokens: Sequence[ApiToken] = request.app.state.context.settings.api.tokens
    if not tokens:
        raise _unauthorized(NO_TOKENS_MESSAGE, error=None)
    if credentials is None:
        raise _unauthorized("missing bearer token; send the header `Authorization: Bearer TOKEN`", error=None)
    principal = find_principal(tokens, credentials.credentials)
    if principal is None:
        logger.warning("rejected an API request with an unknown token: %s %s", request.method, request.url.path)
        raise _unauthorized("invalid bearer token; it matches no entry of api.tokens", error="invalid_token")
    return principal


def require_reviewer(principal: Annotated[Principal, Depends(require_viewer)]) -> Principal:
    """Authenticate the request and require the reviewer role; 403 for a viewer."""
    if not principal.is_reviewer:
        raise HTTPException(
            status_code=status.HTTP_403_FORBIDDEN,
            detail=f"token {principal.name!r} has the viewer role; this action needs a reviewer token",
        )
    return principal


def _unauthorized(message: str, *, error: str | None) -> HTTPException:
    challenge = f'{BEARER_CHALLENGE}, error="{error}"' if error else BEARER_CHALLENGE
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=message, headers={"WWW-Authenticate": challenge}
    )


def data_router(prefix: str, tag: str) -> APIRouter:
    """Return a router under /v1 whose every route requires at least a viewer token."""
    return APIRouter(
        prefix=API_PREFIX + prefix,
        tags=[tag],
        dependencies=[Depends(require_viewer)],
        responses={
            401: {"model": ErrorResponse, "description": "Missing or unknown bearer token."},
            422: {"model": ErrorResponse, "description": "A parameter or the body is invalid."},
            503: {"model": ErrorResponse, "description": "PostgreSQL is unavailable; retry later."},
        },
    )
