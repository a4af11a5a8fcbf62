"""Per-user risk queries and the flag job on a large synthetic database (default 1,000,000 exchanges, 50,000 users).

The script creates a schema of its own in the configured database, migrates it,
bulk-loads scored exchanges with COPY, runs ANALYZE, and then measures:

- `user_risk` with an empty baseline cache (each call sums the whole windows);
- one run of the baseline job, which fills the cache;
- `user_risk` for a sample of users, the heaviest ones included, with a fresh
  cache, and again after new exchanges arrive and the window moves on, so that
  every call corrects the cached sums;
- two runs of the flag job.

Activity is heavy-tailed: user i (from 1) sends a share proportional to
i^-0.7, so the heaviest user has about 1.2% of all exchanges and the median
user about 10, over 14 days. Each exchange has two sentinels, SORRYDAVE
(threshold 0.5) and HELLNODAVE (threshold 0.01). About 350 answered
exchanges are slip-throughs: up to 250 in the last day from 40 abusive users,
and 100 from anyone at any time. Conversations are not stored, as with
`database.store_raw_text = false`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.jobs.baselines import run_baseline_job
from monitor.jobs.flag_users import run_flag_job
from monitor.settings import DatabaseSettings, FlagSettings, RiskSettings, load_settings
from monitor.user_risk import user_risk
from storage.engine import create_engine, create_session_factory
from storage.migrate import upgrade

SPAN = timedelta(days=14)
ACTIVITY_EXPONENT = 0.7
THRESHOLDS = {"SORRYDAVE": 0.5, "HELLNODAVE": 0.01}
ABUSIVE_USERS = 40
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEMPLATE_SHA = "7" * 64
TOKENIZER_SHA = "3" * 64
# The window moves on by this much between the baseline job and the corrected queries.
MOVE_ON = timedelta(seconds=120)


@dataclass(frozen=True)
class Dataset:
    """Generated columns, one array entry per exchange, ordered by creation time."""

    user: np.ndarray
    created_s: np.ndarray  # seconds before `now`
    outcome: np.ndarray  # 0 answered, 1 refused, 2 unknown
    override: np.ndarray
    probs: dict[str, np.ndarray]


def main() -> int:
    args = _parse_args()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    _print_header(args)
    schema = f"bench_risk_{now:%Y%m%d%H%M%S}_{os.getpid()}"
    admin = sqlalchemy.create_engine(args.database_url, poolclass=sqlalchemy.pool.NullPool)
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        _run(args, schema, now)
    finally:
        if args.keep_schema:
            print(f"kept schema {schema}")
        else:
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=1_000_000, help="exchanges to load")
    parser.add_argument("--users", type=int, default=50_000, help="distinct users")
    parser.add_argument("--queries", type=int, default=500, help="users sampled for the per-user risk query")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated data and the user sample")
    parser.add_argument("--keep-schema", action="store_true", help="keep the benchmark schema instead of dropping it")
    parser.add_argument(
        "--database-url", default=load_settings().database.url, help="database to create the benchmark schema in"
    )
    args = parser.parse_args()
    if args.users < 1 or args.exchanges < args.users:
        parser.error("--users must be at least 1 and --exchanges at least --users")
    return args


def _print_header(args: argparse.Namespace) -> None:
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with psycopg.connect(_libpq(args.database_url)) as connection:
        settings = connection.execute(
            "SELECT version(), current_setting('shared_buffers'), current_setting('work_mem')"
        ).fetchone()
    assert settings is not None
    print(f"# server: {settings[0].split(' on ')[0]}, shared_buffers {settings[1]}, work_mem {settings[2]}")


def _run(args: argparse.Namespace, schema: str, now: datetime) -> None:
    url = make_url(args.database_url).update_query_dict({"options": f"-csearch_path={schema}"})
    database = DatabaseSettings(url=url.render_as_string(hide_password=False), pool_size=2)
    upgrade(database)
    engine = create_engine(settings=database)
    factory = create_session_factory(engine=engine)
    rng = np.random.default_rng(args.seed)
    risk = RiskSettings()

    data = _generate(rng, args.exchanges, args.users)
    seconds = _timed(lambda: _load(_libpq(args.database_url), schema, data, now))
    slips = int(_slip_through_mask(data).sum())
    print(f"loaded {args.exchanges:,} exchanges ({slips} slip-throughs) of {args.users:,} users in {seconds:.1f} s")
    print(f"analyzed in {_timed(lambda: _analyze(factory)):.1f} s")

    sample = _sample_users(rng, data, args.users, args.queries)
    heaviest = np.bincount(data.user, minlength=args.users).max()
    print(f"sampled {len(sample)} users, the 10 heaviest included (most active: {heaviest:,} exchanges)")

    cold = [_timed(lambda: _cold_query(factory, user, risk, now)) for user in sample[:3]]
    print(f"user_risk, empty baseline cache (sums the whole windows): {_ms_list(cold)} ms")

    windows = (*risk.windows_s, FlagSettings().window_s)
    print(f"baseline job: {_timed(lambda: run_baseline_job(factory, windows, now=now)):.2f} s")

    _report("user_risk, fresh cache", _query_latencies(factory, sample, risk, now))
    _insert_recent(factory, rng, args.users, now)
    _report("user_risk, cache corrected after 2 min", _query_latencies(factory, sample, risk, now + MOVE_ON))

    _flag_run(factory, risk, now + MOVE_ON, "first run, no watermark yet (evaluates every user)")
    _insert_recent(factory, rng, args.users, now + MOVE_ON, prefix="ex-later")
    _flag_run(factory, risk, now + 2 * MOVE_ON, "incremental run after the new exchanges")
    _flag_run(factory, risk, now + 2 * MOVE_ON, "incremental run with nothing new")
    engine.dispose()


def _flag_run(factory: sessionmaker[Session], risk: RiskSettings, now: datetime, label: str) -> None:
    started = time.perf_counter()
    result = run_flag_job(factory, FlagSettings(), risk=risk, now=now)
    seconds = time.perf_counter() - started
    rule = result.rules[0]
    evaluated = "all" if rule.evaluated_users is None else f"{rule.evaluated_users:,}"
    print(
        f"flag job, {label}: {seconds:.2f} s; users evaluated {evaluated}, over the rule {rule.users_over_threshold}, "
        f"created {rule.created}, updated {rule.updated}, unchanged {rule.unchanged}, recovered {rule.recovered}"
    )


def _generate(rng: np.random.Generator, exchanges: int, users: int) -> Dataset:
    weights = np.arange(1, users + 1, dtype=float) ** -ACTIVITY_EXPONENT
    # Every user sends at least one exchange; the rest follow the weights.
    user = np.concatenate([np.arange(users), rng.choice(users, size=exchanges - users, p=weights / weights.sum())])
    created_s = rng.uniform(10.0, SPAN.total_seconds(), size=exchanges)
    order = np.argsort(-created_s)  # oldest first, as the rows would arrive
    user, created_s = user[order], created_s[order]

    outcome = rng.choice(3, size=exchanges, p=[0.85, 0.12, 0.03])
    refused = outcome == 1
    sorry = np.minimum(0.49, 10 ** rng.normal(-2.0, 0.6, exchanges))
    sorry[refused] = rng.uniform(0.5, 0.99, int(refused.sum()))
    hellno = np.minimum(0.0099, 10 ** rng.normal(-4.5, 0.7, exchanges))
    hellno[refused] = 10 ** rng.uniform(-4, -0.3, int(refused.sum()))
    override = rng.random(exchanges) < 0.002
    data = Dataset(user, created_s, outcome, override, {"SORRYDAVE": sorry, "HELLNODAVE": hellno})
    _add_slip_throughs(rng, data, users)
    return data


def _add_slip_throughs(rng: np.random.Generator, data: Dataset, users: int) -> None:
    # The abusive users are among the 100th to 1,000th most active, and most of
    # their slip-throughs fall in the last day, so that the flag job flags them.
    answered = np.flatnonzero((data.outcome == 0) & ~data.override)
    low = min(100, users // 10)
    candidates = np.arange(low, max(low + 1, min(users, 1000)))
    abusive = rng.choice(candidates, size=min(ABUSIVE_USERS, len(candidates)), replace=False)
    recent = answered[data.created_s[answered] < 86_400]
    from_abusive = recent[np.isin(data.user[recent], abusive)][:250]
    chosen = np.concatenate([from_abusive, rng.choice(answered, size=min(100, len(answered)), replace=False)])
    data.probs["HELLNODAVE"][chosen] = rng.uniform(0.01, 0.7, len(chosen))
    data.probs["SORRYDAVE"][chosen[::3]] = rng.uniform(0.5, 0.9, len(chosen[::3]))


def _slip_through_mask(data: Dataset) -> np.ndarray:
    flaggable = (data.outcome == 0) & ~data.override
    over = np.zeros(len(data.user), dtype=bool)
    for name, threshold in THRESHOLDS.items():
        over |= data.probs[name] >= threshold
    return flaggable & over


def _load(conninfo: str, schema: str, data: Dataset, now: datetime) -> None:
    with psycopg.connect(conninfo) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        with connection.cursor() as cursor:
            with cursor.copy(
                "COPY exchanges (id, user_id, model, created_at, ingested_at, override_trusted, override_reason, "
                "source_format, outcome_kind, outcome_decided_by, outcome_sentinel, prompt_tokens, truncated, "
                "slip_through, max_slip_prob) FROM STDIN"
            ) as copy:
                for row in _exchange_rows(data, now):
                    copy.write_row(row)
            with cursor.copy(
                "COPY scores (exchange_id, sentinel, logprob, prob, threshold, slip_through, model_id, "
                "template_sha256, tokenizer_sha256, scored_at) FROM STDIN"
            ) as copy:
                for row in _score_rows(data, now):
                    copy.write_row(row)


def _exchange_rows(data: Dataset, now: datetime) -> Iterator[tuple[object, ...]]:
    outcomes = ("answered", "refused", "unknown")
    deciders = ("detector", "sentinel", "none")
    slips = _slip_through_mask(data)
    for i in range(len(data.user)):
        created = now - timedelta(seconds=float(data.created_s[i]))
        kind = int(data.outcome[i])
        over = [p[i] for name, p in data.probs.items() if p[i] >= THRESHOLDS[name]]
        yield (
            f"ex-{i:08d}", f"user-{int(data.user[i]):06d}", MODEL, created, created + timedelta(seconds=2),
            bool(data.override[i]), "red team" if data.override[i] else None, "exchange/v1",
            outcomes[kind], deciders[kind], "SORRYDAVE" if kind == 1 else None, 200 + i % 800, False,
            bool(slips[i]), float(max(over)) if slips[i] else None,
        )


def _score_rows(data: Dataset, now: datetime) -> Iterator[tuple[object, ...]]:
    answered = data.outcome == 0
    for i in range(len(data.user)):
        scored = now - timedelta(seconds=float(data.created_s[i]) - 1)
        for name, probs in data.probs.items():
            prob = float(probs[i])
            slipped = bool(answered[i] and prob >= THRESHOLDS[name])
            yield (
                f"ex-{i:08d}", name, float(np.log(prob)), prob, THRESHOLDS[name], slipped,
                MODEL, TEMPLATE_SHA, TOKENIZER_SHA, scored,
            )


def _insert_recent(
    factory: sessionmaker[Session], rng: np.random.Generator, users: int, now: datetime, *, prefix: str = "ex-new"
) -> None:
    """Store exchanges created in the MOVE_ON after `now`, ingested after the baseline job, at 2 per second."""
    count = int(MOVE_ON.total_seconds()) * 2
    with factory() as session, session.begin():
        for i in range(count):
            exchange_id = f"{prefix}-{i:05d}"
            created = now + timedelta(seconds=(i + 1) / 2)
            session.execute(
                text(
                    "INSERT INTO exchanges (id, user_id, model, created_at, source_format, outcome_kind, "
                    "outcome_decided_by, prompt_tokens, truncated, slip_through) VALUES (:id, :user, :model, "
                    ":created, 'exchange/v1', 'answered', 'detector', 300, false, false)"
                ),
                {"id": exchange_id, "user": f"user-{int(rng.integers(users)):06d}", "model": MODEL, "created": created},
            )
            for name, prob in (("SORRYDAVE", 0.01), ("HELLNODAVE", 0.0001)):
                session.execute(
                    text(
                        "INSERT INTO scores (exchange_id, sentinel, logprob, prob, threshold, slip_through, model_id, "
                        "template_sha256, tokenizer_sha256) VALUES (:id, :name, :logprob, :prob, :threshold, false, "
                        ":model, :template, :tokenizer)"
                    ),
                    {
                        "id": exchange_id, "name": name, "logprob": float(np.log(prob)), "prob": prob,
                        "threshold": THRESHOLDS[name], "model": MODEL, "template": TEMPLATE_SHA,
                        "tokenizer": TOKENIZER_SHA,
                    },
                )
    print(f"stored {count} new exchanges created in the next {MOVE_ON.total_seconds():.0f} s")


def _analyze(factory: sessionmaker[Session]) -> None:
    with factory() as session, session.begin():
        session.execute(text("ANALYZE exchanges"))
        session.execute(text("ANALYZE scores"))


def _sample_users(rng: np.random.Generator, data: Dataset, users: int, size: int) -> list[str]:
    counts = np.bincount(data.user, minlength=users)
    heaviest = np.argsort(-counts)[:10]
    others = rng.choice(np.setdiff1d(np.arange(users), heaviest), size=max(0, min(size, users) - 10), replace=False)
    picked = np.concatenate([others[:3], heaviest, others[3:]])[:size]
    return [f"user-{int(user):06d}" for user in picked]


def _cold_query(factory: sessionmaker[Session], user: str, risk: RiskSettings, now: datetime) -> None:
    with factory() as session, session.begin():
        session.execute(text("DELETE FROM population_baselines"))
    with factory() as session, session.begin():
        user_risk(session, user, risk, now=now)


def _query_latencies(factory: sessionmaker[Session], users: list[str], risk: RiskSettings, now: datetime) -> list[float]:
    latencies = []
    for user in users:
        with factory() as session:
            started = time.perf_counter()
            user_risk(session, user, risk, now=now)
            latencies.append(time.perf_counter() - started)
    return latencies


def _report(label: str, latencies: list[float]) -> None:
    ms = sorted(value * 1000 for value in latencies)
    print(
        f"{label}: {len(ms)} queries, p50 {_percentile(ms, 50):.1f} ms, p95 {_percentile(ms, 95):.1f} ms, "
        f"p99 {_percentile(ms, 99):.1f} ms, max {ms[-1]:.1f} ms, mean {statistics.fmean(ms):.1f} ms"
    )


def _percentile(sorted_values: list[float], percent: float) -> float:
    # Nearest rank: the smallest value with at least `percent`% of the values at or below it.
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def _ms_list(seconds: list[float]) -> str:
    return ", ".join(f"{value * 1000:.0f}" for value in seconds)


def _timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


if __name__ == "__main__":
    sys.exit(main())
