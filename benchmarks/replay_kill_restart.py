#!/usr/bin/env python3
"""Replay the public XSTest and refusal-direction files, SIGKILL the daemon midway, restart, count rows.

Uses a fresh topic, consumer group and PostgreSQL schema, so earlier runs do
not change the counts. Prints the messages produced, the rows stored when the
daemon was killed, the final row and score counts, and timings. Needs the
local services (`scripts/services start`) and the pulled default model.

    .venv/bin/python benchmarks/replay_kill_restart.py [--datasets DIR] [--kill-at 0.5]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

from monitor.settings import load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "monitor.cli"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=Path(os.environ.get("SENTINEL_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of rows stored when SIGKILL is sent")
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    if not (args.datasets / "xstest").is_dir():
        print(f"datasets not found at {args.datasets}; pass --datasets", file=sys.stderr)
        return 2

    run_id = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    base_url = load_settings().database.url
    schema = f"bench_replay_{run_id}"
    engine = sqlalchemy.create_engine(base_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    env = dict(os.environ)
    env.update(
        {
            "SENTINEL_DATABASE__URL": url,
            "SENTINEL_KAFKA__TOPIC": f"bench.replay.{run_id}",
            "SENTINEL_KAFKA__DEAD_LETTER_TOPIC": f"bench.replay.{run_id}.dead-letter",
            "SENTINEL_KAFKA__GROUP_ID": f"bench-replay-{run_id}",
            "SENTINEL_LOG_LEVEL": "WARNING",
        }
    )

    def run(*command: str) -> str:
        return subprocess.run([*CLI, *command], env=env, cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout

    def count(sql: str) -> int:
        with engine.connect() as connection:
            connection.exec_driver_sql(f'SET search_path TO "{schema}"')
            return int(connection.exec_driver_sql(sql).scalar_one())

    print(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, schema {schema}")
    run("db", "upgrade")
    started = time.monotonic()
    print(run("replay", str(args.datasets / "xstest"), "--format", "xstest", "--users", str(args.users)).strip())
    runs = args.datasets / "refusal_direction" / "runs"
    print(run("replay", str(runs), "--format", "refusal-direction", "--users", str(args.users)).strip())
    produced = 3750

    daemon = subprocess.Popen([*CLI, "run", "--no-scheduler"], env=env, cwd=REPO_ROOT)
    while count("SELECT count(*) FROM exchanges") < produced * args.kill_at:
        if daemon.poll() is not None:
            print(f"daemon exited early with {daemon.returncode}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    at_kill = count("SELECT count(*) FROM exchanges")
    print(f"SIGKILL after {time.monotonic() - started:.0f} s with {at_kill} rows stored")

    restart = time.monotonic()
    print(run("run", "--no-scheduler", "--until-caught-up").strip())
    rows = count("SELECT count(*) FROM exchanges")
    distinct = count("SELECT count(DISTINCT id) FROM exchanges")
    scores = count("SELECT count(*) FROM scores")
    unscored = count("SELECT count(*) FROM exchanges e WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.exchange_id = e.id)")
    print(f"restart caught up in {time.monotonic() - restart:.0f} s; total {time.monotonic() - started:.0f} s")
    print(f"produced={produced} rows={rows} distinct_ids={distinct} scores={scores} unscored={unscored}")
    print(f"rows_per_message={rows / produced:.4f} throughput_msgs_per_s={produced / (time.monotonic() - started):.2f}")
    ok = rows == produced and distinct == produced and unscored == 0
    print("RESULT:", "exactly one scored row per exchange" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
