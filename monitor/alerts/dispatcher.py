"""The alert dispatcher: claim due deliveries, send them through their sinks, and record each result.

Every replica runs the dispatcher each `alerts.interval_s`. The steps of one run:

1. Register the configured sinks and skip those that are disabled, or cooling
   down after a failure (the same backoff as a delivery's retry).
2. Claim due pending deliveries with `SELECT ... FOR UPDATE SKIP LOCKED` and
   move them past a lease (`alerts.claim_lease_s`), then commit, so that no
   row lock is held while a sink is waited on.
3. Send each claimed delivery. A send starts only when it can finish before
   the lease ends, so another replica cannot claim it meanwhile.
4. Record each result in a short transaction of its own: delivered, or
   failed with the next attempt after an exponential backoff. After a failure
   the sink gets no more sends in this run.
5. A sink's `alerts.disable_after_failures`-th consecutive failure disables
   it, and a `sink_disabled` alert goes to the other enabled sinks. Its
   pending deliveries wait until an operator enables it again.

Delivery is at least once: a crash after a send and before step 4 commits
leaves the delivery pending, and it is sent again once the lease ends.
Receivers drop such repeats by the alert's dedup key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from monitor.alerts.errors import SinkError
from monitor.alerts.sinks import Sink
from monitor.settings import AlertSettings
from storage.alerts import (
    AlertDraft,
    ClaimedDelivery,
    SinkState,
    claim_due_deliveries,
    enqueue_alert,
    ensure_sinks,
    mark_delivered,
    read_sinks,
    record_delivery_failure,
    record_sink_failure,
    record_sink_success,
    release_claim,
)
from storage.engine import SessionFactory, transaction

logger = logging.getLogger(__name__)

JOB_NAME = "alert_dispatch"
# last_error is cut to this many characters.
MAX_ERROR_CHARS = 1000


@dataclass
class DispatchResult:
    """Counts of one dispatcher run: deliveries claimed, delivered, failed and given back unsent, and sinks disabled."""

    claimed: int = 0
    delivered: int = 0
    failed: int = 0
    released: int = 0
    disabled_sinks: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "claimed": self.claimed,
            "delivered": self.delivered,
            "failed": self.failed,
            "released": self.released,
            "disabled_sinks": list(self.disabled_sinks),
        }


def backoff_delay(settings: AlertSettings, failures: int) -> timedelta:
    """Return the wait after the `failures`-th consecutive failure: retry_initial_s doubled each time, up to retry_max_s."""
    exponent = min(max(failures - 1, 0), 62)
    return timedelta(seconds=min(settings.retry_max_s, settings.retry_initial_s * 2.0**exponent))


def run_alert_dispatch(
    session_factory: SessionFactory,
    settings: AlertSettings,
    sinks: Mapping[str, Sink],
    *,
    now: datetime | None = None,
) -> DispatchResult:
    """Deliver the due alert deliveries of the configured `sinks` once, and return what happened.

    With `now` given, every time the run writes is `now` (tests step through
    retries this way). Without it, the clock is read at each step.
    """
    clock: Callable[[], datetime] = (lambda: now) if now is not None else _utc_now
    result = DispatchResult()

    # 1. Register the sinks, and keep the ones that may be sent to now.
    with transaction(session_factory, "register the alert sinks") as session:
        ensure_sinks(session, list(sinks), now=clock())
        states = read_sinks(session, list(sinks))
    ready = _ready_sinks(states, settings, clock())
    if not ready:
        return result

    # 2. Claim due deliveries; the commit ends the row locks.
    started = clock()
    lease_until = started + timedelta(seconds=settings.claim_lease_s)
    with transaction(session_factory, "claim due alert deliveries") as session:
        claims = claim_due_deliveries(
            session, sinks=ready, now=started, lease_until=lease_until, limit=settings.batch_size
        )
    result.claimed = len(claims)

    # 3 to 5. Send sink by sink, so that one slow or failing sink does not hold up the others' results.
    for sink_name, sink_claims in _by_sink(claims).items():
        _deliver_to_sink(session_factory, settings, sinks, sinks[sink_name], sink_claims, clock, result)

    if result.claimed:
        logger.info(
            "alert dispatch: %d claimed, %d delivered, %d failed, %d given back unsent",
            result.claimed, result.delivered, result.failed, result.released,
        )  # fmt: skip
    return result


def _deliver_to_sink(
    session_factory: SessionFactory,
    settings: AlertSettings,
    sinks: Mapping[str, Sink],
    sink: Sink,
    claims: Sequence[ClaimedDelivery],
    clock: Callable[[], datetime],
    result: DispatchResult,
) -> None:
    for index, claim in enumerate(claims):
        # A send that could outlast the lease might overlap another replica's claim of the same delivery.
        if clock() + timedelta(seconds=sink.timeout_s) >= claim.lease_until:
            _release(session_factory, claims[index:], clock(), result)
            return
        try:
            sink.send(claim.alert)
        except SinkError as exc:
            result.failed += 1
            _record_failure(session_factory, settings, sinks, claim, str(exc)[:MAX_ERROR_CHARS], clock(), result)
            _release(session_factory, claims[index + 1 :], clock(), result)
            return
        _record_success(session_factory, claim, clock())
        result.delivered += 1


def _record_success(session_factory: SessionFactory, claim: ClaimedDelivery, now: datetime) -> None:
    with transaction(session_factory, f"record the delivery of alert {claim.alert.id} to {claim.sink}") as session:
        marked = mark_delivered(session, claim, now=now)
        record_sink_success(session, claim.sink, now=now)
    if not marked:
        logger.warning(
            "alert %d was sent to %s after another replica had already delivered it; the receiver gets it twice",
            claim.alert.id, claim.sink,
        )  # fmt: skip


def _record_failure(
    session_factory: SessionFactory,
    settings: AlertSettings,
    sinks: Mapping[str, Sink],
    claim: ClaimedDelivery,
    error: str,
    now: datetime,
    result: DispatchResult,
) -> None:
    retry_at = now + backoff_delay(settings, claim.attempts)
    with transaction(session_factory, f"record a failed delivery of alert {claim.alert.id}") as session:
        record_delivery_failure(session, claim, error=error, next_attempt_at=retry_at)
        failure = record_sink_failure(
            session, claim.sink, error=error, now=now, disable_after=settings.disable_after_failures
        )
        others = [name for name in sinks if name != claim.sink]
        if failure is not None and failure.disabled:
            enabled = [state.name for state in read_sinks(session, others) if state.enabled]
            draft = _sink_disabled_draft(claim.sink, failure.consecutive_failures, error, now)
            enqueue_alert(session, draft, sinks=enabled, now=now)

    logger.warning(
        "alert %d could not be delivered to %s (attempt %d), retrying at %s: %s",
        claim.alert.id, claim.sink, claim.attempts, retry_at.isoformat(), error,
    )  # fmt: skip
    if failure is not None and failure.disabled:
        result.disabled_sinks.append(claim.sink)
        logger.error(
            "alert sink %s is disabled after %d consecutive failures, and its pending deliveries wait until "
            "`sentinel-monitor alerts enable %s`; last error: %s",
            claim.sink, failure.consecutive_failures, claim.sink, error,
        )  # fmt: skip


def _release(
    session_factory: SessionFactory, claims: Sequence[ClaimedDelivery], now: datetime, result: DispatchResult
) -> None:
    if not claims:
        return
    with transaction(session_factory, f"give back {len(claims)} unsent alert deliveries") as session:
        for claim in claims:
            release_claim(session, claim, now=now)
    result.released += len(claims)


def _sink_disabled_draft(sink: str, failures: int, error: str, now: datetime) -> AlertDraft:
    return AlertDraft(
        dedup_key=f"sink_disabled:{sink}:{now.isoformat()}",
        kind="sink_disabled",
        severity="high",
        flag_id=None,
        user_id=None,
        rule=None,
        payload={
            "summary": f"Alert sink {sink} is disabled after {failures} consecutive failed deliveries; "
            f"run `sentinel-monitor alerts enable {sink}` once it works again.",
            "sink": sink,
            "consecutive_failures": failures,
            "last_error": error,
        },
    )


def _ready_sinks(states: Sequence[SinkState], settings: AlertSettings, now: datetime) -> list[str]:
    """Return the enabled sinks that are not cooling down after their latest failure."""
    ready = []
    for state in states:
        if not state.enabled:
            continue
        if state.consecutive_failures and state.updated_at + backoff_delay(settings, state.consecutive_failures) > now:
            continue
        ready.append(state.name)
    return ready


def _by_sink(claims: Sequence[ClaimedDelivery]) -> dict[str, list[ClaimedDelivery]]:
    grouped: dict[str, list[ClaimedDelivery]] = {}
    for claim in claims:
        grouped.setdefault(claim.sink, []).append(claim)
    return grouped


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
