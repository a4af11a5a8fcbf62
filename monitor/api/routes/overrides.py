"""The override audit: allowlist entries, override exchanges and the slip-throughs they kept out of flags."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query
from sqlalchemy.orm import Session

from monitor.api.auth import data_router
from monitor.api.context import ApiContext, get_context, get_session
from monitor.api.schemas import ErrorResponse, OverrideAudit
from monitor.overrides import InvalidAuditQueryError, override_audit

router = data_router("/overrides", "overrides")

MAX_AUDIT_ITEMS = 1000


@router.get(
    "/audit",
    response_model=OverrideAudit,
    summary="Allowlist entries in force, override exchanges, and the slip-throughs left out of flags",
    responses={422: {"model": ErrorResponse, "description": "The period is empty or a time has no offset."}},
)
def get_override_audit(
    context: Annotated[ApiContext, Depends(get_context)],
    session: Annotated[Session, Depends(get_session)],
    since: Annotated[datetime | None, Query(description="RFC 3339 time with offset; no lower bound by default.")] = None,
    until: Annotated[datetime | None, Query(description="RFC 3339 time with offset; default now.")] = None,
    user_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_AUDIT_ITEMS, description="Items per list.")] = 100,
) -> dict[str, Any]:
    try:
        audit = override_audit(session, since=since, until=until, user_id=user_id, limit=limit, now=context.clock())
    except InvalidAuditQueryError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return audit.as_json()
