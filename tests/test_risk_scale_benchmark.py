"""A small run of benchmarks/risk_scale.py: it loads, measures and prints every result line. Speed is not checked."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest_db import database_url_for_tests, require_postgres

pytestmark = pytest.mark.postgres

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "risk_scale.py"
PERCENTILES = r"30 queries, p50 [\d.]+ ms, p95 [\d.]+ ms, p99 [\d.]+ ms, max [\d.]+ ms"


def test_small_run_prints_every_measurement() -> None:
    url = database_url_for_tests()
    require_postgres(url)

    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--exchanges", "2000", "--users", "100", "--queries", "30", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "loaded 2,000 exchanges" in output
    assert re.search(r"user_risk, empty baseline cache .*: \d+, \d+, \d+ ms", output), output
    assert re.search(r"baseline job: [\d.]+ s", output), output
    assert re.search(rf"user_risk, fresh cache: {PERCENTILES}", output), output
    assert re.search(rf"user_risk, cache corrected after 2 min: {PERCENTILES}", output), output
    assert re.search(r"flag job, first run, no watermark yet .*: [\d.]+ s; users evaluated all", output), output
    incremental = re.search(r"flag job, incremental run after the new exchanges: [\d.]+ s; users evaluated ([\d,]+)", output)
    assert incremental, output
    assert 0 < int(incremental.group(1).replace(",", "")) <= 100
    assert re.search(r"flag job, incremental run with nothing new: [\d.]+ s; users evaluated", output), output
    assert "kept schema" not in output
