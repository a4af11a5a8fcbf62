"""Flags: list with filters, one flag with its history, and the review action (reviewers only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query
from sqlalchemy.orm import Session

from monitor.api.auth import Principal, data_router, require_reviewer
from monitor.api.context import ApiContext, get_context, get_session
from monitor.api.flag_views import find_flags, flag_detail, review
from monitor.api.schemas import ErrorResponse, FlagDetail, FlagList, FlagReview, FlagStatus, Severity

router = data_router("/flags", "flags")

MAX_FLAGS = 1000
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse, "description": "No flag has this id."}}


@router.get("", response_model=FlagList, summary="Flags matching every filter given, most recently updated first")
def get_flags(
    session: Annotated[Session, Depends(get_session)],
    status: FlagStatus | None = None,
    rule: str | None = None,
    user_id: str | None = None,
    severity: Severity | None = None,
    firing: Annotated[bool | None, Query(description="true: the user meets the rule now.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_FLAGS)] = 100,
) -> FlagList:
    flags = find_flags(
        session, status=status, rule=rule, user_id=user_id, severity=severity, firing=firing, limit=limit
    )
    return FlagList(flags=flags)


@router.get("/{flag_id}", response_model=FlagDetail, summary="One flag with its history", responses=NOT_FOUND)
def get_flag(flag_id: int, session: Annotated[Session, Depends(get_session)]) -> FlagDetail:
    detail = flag_detail(session, flag_id)
    if detail is None:
        raise HTTPException(status_code=404, detail=f"flag {flag_id} not found")
    return detail


@router.post(
    "/{flag_id}/review",
    response_model=FlagDetail,
    summary="Set a flag's review status (reviewer role); the change is recorded as an event",
    responses={**NOT_FOUND, 403: {"model": ErrorResponse, "description": "The token has the viewer role."}},
)
def post_flag_review(
    flag_id: int,
    body: FlagReview,
    principal: Annotated[Principal, Depends(require_reviewer)],
    context: Annotated[ApiContext, Depends(get_context)],
) -> FlagDetail:
    detail = review(
        context.session_factory,
        flag_id,
        body.status,
        actor=principal.name,
        note=body.note,
        now=context.clock(),
        sinks=context.settings.alerts.sink_names(),
    )
    if detail is None:
        raise HTTPException(status_code=404, detail=f"flag {flag_id} not found")
    return detail
