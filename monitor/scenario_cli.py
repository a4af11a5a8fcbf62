"""The `sentinel-monitor scenario` commands: build the abusive-user scenario, or run it end to end.

`scenario run` works in a schema and on topics of its own, so it never mixes
with the data of a running deployment:

1. create the schema `scenario_<time>` in the configured database and migrate it;
2. build the scenario (monitor/scenario.py) and produce it to the topic
   `sentinel.scenario.<time>`;
3. run the daemon's pipeline until it has consumed everything, with the
   configured model and flag rules and without the scheduler or the API;
4. run the flag job once, compare the flagged users with the abusive ones,
   and print a per-user table;
5. drop the schema unless `--keep` is given. The topics stay, because they
   are small and Kafka deletes them by retention.

The exit status is 0 when exactly the abusive users are flagged and 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy.engine import make_url

from monitor.scenario import Scenario, ScenarioShape, build_scenario, write_jsonl
from monitor.settings import Settings

EXIT_OK = 0
EXIT_MISMATCH = 1


def add_scenario_command(commands: Any, datasets_default: str) -> None:
    """Register `scenario build` and `scenario run`."""
    scenario = commands.add_parser(
        "scenario", help="public traffic with simulated abusive users: build it, or run it end to end"
    ).add_subparsers(dest="action", required=True)

    build = scenario.add_parser("build", help="write the scenario as exchange/v1 JSON lines")
    _add_shape_arguments(build, datasets_default)
    build.add_argument("--output", required=True, metavar="FILE", help="JSON lines file to write")
    build.set_defaults(handler=_build)

    run = scenario.add_parser(
        "run", help="replay the scenario through Kafka into a new schema, flag, and check who is flagged"
    )
    _add_shape_arguments(run, datasets_default)
    run.add_argument("--keep", action="store_true", help="keep the scenario's schema to explore it afterwards")
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(handler=_run)


def _add_shape_arguments(parser: argparse.ArgumentParser, datasets_default: str) -> None:
    from monitor.cli import positive_int

    defaults = ScenarioShape()
    parser.add_argument("--datasets", default=datasets_default, help="public datasets folder (default: $SENTINEL_DATASETS_DIR)")
    parser.add_argument("--public-users", type=positive_int, default=defaults.public_users, help="users of the public traffic")
    parser.add_argument("--heavy-requests", type=positive_int, default=defaults.heavy_requests, help="requests of the heavy benign user")
    parser.add_argument("--abusive-users", type=positive_int, default=defaults.abusive_users, help="simulated abusive users")
    parser.add_argument(
        "--abusive-requests", type=positive_int, default=defaults.abusive_requests, help="harmful requests per abusive user"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random assignment")


def _shape(args: argparse.Namespace) -> ScenarioShape:
    return ScenarioShape(
        public_users=args.public_users,
        heavy_requests=args.heavy_requests,
        abusive_users=args.abusive_users,
        abusive_requests=args.abusive_requests,
        seed=args.seed,
    )


def _build(args: argparse.Namespace, settings: Settings) -> int:
    shape = _shape(args)
    scenario = build_scenario(Path(args.datasets), shape, start=_now() - shape.span)
    write_jsonl(scenario, Path(args.output))
    print(
        f"wrote {len(scenario.messages)} exchanges for {len(scenario.users())} users to {args.output}; "
        f"abusive users: {', '.join(scenario.abusive_users)}; heavy benign user: {scenario.heavy_user}"
    )
    return EXIT_OK


def _run(args: argparse.Namespace, settings: Settings) -> int:
    shape = _shape(args)
    now = _now()
    scenario = build_scenario(Path(args.datasets), shape, start=now - shape.span)
    stamp = now.strftime("%Y%m%d%H%M%S") + "_" + secrets.token_hex(2)
    schema = f"scenario_{stamp}"
    scenario_settings = _isolated_settings(settings, schema, stamp)
    _create_schema(settings.database.url, schema)
    try:
        report = _replay_and_flag(scenario, scenario_settings, now=_now())
    finally:
        if not args.keep:
            _drop_schema(settings.database.url, schema)
    _print_report(report, as_json=args.json, schema=schema if args.keep else None)
    return EXIT_OK if report["exact"] else EXIT_MISMATCH


def _replay_and_flag(scenario: Scenario, settings: Settings, *, now: datetime) -> dict[str, Any]:
    from consumers.clients import build_producer, ensure_topics
    from consumers.producer import produce_messages
    from monitor.daemon import DaemonOptions, run_daemon
    from monitor.jobs.flag_users import run_flag_job
    from monitor.replay import ReplayMessage
    from storage.engine import create_engine, create_session_factory
    from storage.migrate import upgrade

    upgrade(settings.database)
    ensure_topics(settings.kafka)
    producer = build_producer(settings.kafka)
    messages = [ReplayMessage(key=item["user_id"], value=json.dumps(item).encode("utf-8")) for item in scenario.messages]
    try:
        summary = produce_messages(producer, settings.kafka.topic, messages, show_progress=sys.stderr.isatty())
    finally:
        producer.close(timeout=10)
    print(f"produced {summary.sent} exchanges to {settings.kafka.topic}; scoring them", file=sys.stderr)
    run_daemon(settings, DaemonOptions(until_caught_up=True, with_scheduler=False, with_api=False))

    engine = create_engine(settings=settings.database)
    try:
        session_factory = create_session_factory(engine=engine)
        result = run_flag_job(session_factory, settings.flags, risk=settings.risk, now=now)
        return _report(session_factory, scenario, settings, now=now, rules=result.rule)
    finally:
        engine.dispose()


def _report(session_factory: Any, scenario: Scenario, settings: Settings, *, now: datetime, rules: str) -> dict[str, Any]:
    from monitor.user_risk import risk_for_users
    from storage.activity import TimeWindow, count_user_exchanges
    from storage.flags import list_flags

    rule = settings.flags.active_rules()[0]
    window = TimeWindow.ending(now, timedelta(seconds=rule.window_s))
    users = sorted(scenario.users())
    with session_factory() as session:
        flags = list_flags(session, limit=10_000)
        counts = count_user_exchanges(session, users, window)
        risks = risk_for_users(session, users, window, settings.risk)
    flagged = sorted({flag.user_id for flag in flags})
    rows = [
        {
            "user_id": user,
            "role": _role(user, scenario),
            "exchanges": counts[user].exchanges if user in counts else 0,
            "slip_throughs": counts[user].slip_throughs if user in counts else 0,
            "risk": round(risks[user][0], 4),
            "flagged": user in flagged,
        }
        for user in users
    ]
    return {
        "rules": rules,
        "exchanges": len(scenario.messages),
        "users": len(users),
        "abusive_users": list(scenario.abusive_users),
        "flagged_users": flagged,
        "exact": flagged == sorted(scenario.abusive_users),
        "table": sorted(rows, key=lambda row: (-row["slip_throughs"], row["user_id"])),
    }


def _role(user: str, scenario: Scenario) -> str:
    if user in scenario.abusive_users:
        return "abusive"
    return "heavy benign" if user == scenario.heavy_user else "public"


def _print_report(report: dict[str, Any], *, as_json: bool, schema: str | None) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['exchanges']} exchanges from {report['users']} users; rule(s): {report['rules']}")
    print(f"{'user':<14} {'role':<13} {'exchanges':>9} {'slip-thr.':>9} {'risk':>6}  flagged")
    for row in report["table"]:
        if row["role"] == "public" and row["slip_throughs"] == 0 and not row["flagged"]:
            continue
        print(
            f"{row['user_id']:<14} {row['role']:<13} {row['exchanges']:>9} {row['slip_throughs']:>9} "
            f"{row['risk']:>6.2f}  {'yes' if row['flagged'] else 'no'}"
        )
    verdict = "flagged exactly the abusive users" if report["exact"] else "did NOT flag exactly the abusive users"
    print(f"result: {verdict}: flagged {', '.join(report['flagged_users']) or 'nobody'}")
    if schema:
        print(f"the data is kept in schema {schema}; drop it with DROP SCHEMA {schema} CASCADE")


def _isolated_settings(settings: Settings, schema: str, stamp: str) -> Settings:
    url = make_url(settings.database.url).update_query_dict({"options": f"-csearch_path={schema}"})
    database = dataclasses.replace(settings.database, url=url.render_as_string(hide_password=False))
    kafka = dataclasses.replace(
        settings.kafka,
        topic=f"sentinel.scenario.{stamp}",
        dead_letter_topic=f"sentinel.scenario.{stamp}.dead-letter",
        group_id=f"sentinel-scenario-{stamp}",
        auto_offset_reset="earliest",
    )
    return dataclasses.replace(settings, database=database, kafka=kafka)


def _create_schema(url: str, schema: str) -> None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    finally:
        engine.dispose()


def _drop_schema(url: str, schema: str) -> None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        engine.dispose()


def _now() -> datetime:
    return datetime.now(timezone.utc)
