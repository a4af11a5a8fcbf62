"""Per-user risk, history and the ranking of the riskiest users."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Query
from sqlalchemy.orm import Session

from monitor.api.auth import data_router
from monitor.api.context import ApiContext, get_context, get_session
from monitor.api.schemas import ErrorResponse, Flag, HistoryExchange, TopUsers, UserHistory, UserRiskReport
from monitor.durations import format_duration, parse_duration
from monitor.user_risk import user_risk, user_risk_json
from monitor.users import top_users, top_users_json
from storage.flags import list_user_flags
from storage.history import user_history

router = data_router("/users", "users")

MAX_TOP_USERS = 1000
MAX_HISTORY = 500
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {
        "model": ErrorResponse,
        "description": "No data for the user: no exchange in the longest risk window (risk), or no exchange and no flag (history).",
    }
}


@router.get("/top", response_model=TopUsers, summary="Users with the most slip-throughs in the window, with their risk")
def get_top_users(
    context: Annotated[ApiContext, Depends(get_context)],
    session: Annotated[Session, Depends(get_session)],
    window: Annotated[str, Query(description="Window ending now: 90s, 15m, 24h, 7d or 2w.")] = "24h",
    limit: Annotated[int, Query(ge=1, le=MAX_TOP_USERS, description="Users to list.")] = 20,
) -> dict[str, Any]:
    length = _window(window)
    with context.metrics.time_risk_query("top_users"):
        users = top_users(session, window=length, now=context.clock(), limit=limit, risk=context.settings.risk)
    return top_users_json(length, users)


@router.get(
    "/{user_id:path}/risk",
    response_model=UserRiskReport,
    summary="A user's risk score per window, with the numbers and exchanges behind it",
    responses=NOT_FOUND,
)
def get_user_risk(
    user_id: str,
    context: Annotated[ApiContext, Depends(get_context)],
    session: Annotated[Session, Depends(get_session)],
) -> dict[str, Any]:
    settings = context.settings.risk
    with context.metrics.time_risk_query("user_risk"):
        windows = user_risk(session, user_id, settings, now=context.clock())
    if all(window.exchanges == 0 for window in windows):
        longest = format_duration(max(settings.windows_s))
        raise HTTPException(status_code=404, detail=f"user {user_id!r} has no exchanges in the last {longest}")
    return user_risk_json(user_id, windows)


@router.get(
    "/{user_id:path}/history",
    response_model=UserHistory,
    summary="A user's latest exchanges, without their text, and the user's flags",
    responses=NOT_FOUND,
)
def get_user_history(
    user_id: str,
    session: Annotated[Session, Depends(get_session)],
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY, description="Latest exchanges to list.")] = 50,
) -> UserHistory:
    exchanges = user_history(session, user_id, limit=limit)
    flags = list_user_flags(session, user_id)
    if not exchanges and not flags:
        raise HTTPException(status_code=404, detail=f"user {user_id!r} has no stored exchanges or flags")
    return UserHistory(
        user_id=user_id,
        exchanges=[
            HistoryExchange(
                id=item.id,
                created_at=item.created_at,
                model=item.model,
                outcome=item.outcome_kind,
                decided_by=item.outcome_decided_by,
                outcome_sentinel=item.outcome_sentinel,
                override=item.override,
                slip_through=item.slip_through,
                max_slip_prob=item.max_slip_prob,
                injection_attempts=item.injection_attempts,
                probabilities=item.probabilities,
                slip_through_sentinels=list(item.slip_through_sentinels),
            )
            for item in exchanges
        ],
        flags=[Flag.from_record(flag) for flag in flags],
    )


def _window(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
