"""``python -m bench.ps`` end to end with tiny settings: the parameter server and every
baseline run and the table prints. No figure is asserted: this machine's timings are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]


def test_bench_ps_runs_every_system_and_prints_ratios() -> None:
    command = [sys.executable, "-m", "bench.ps", "--seconds", "0.2", "--clients", "1", "2",
               "--keys", "64", "--table-size", "4096", "--shards", "1", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    ps_rows = [row for row in rows if row[:2] == ["parameter", "server"]]
    assert [row[2] for row in ps_rows] == ["1", "2"]
    assert all(row[-1].endswith("x") for row in ps_rows), result.stdout  # PS / echo ratio
    assert sum(row[:2] == ["echo", "server"] for row in rows) == 2
    # Redis runs where the bench extra is installed, and is reported as skipped elsewhere (CI).
    redis_rows = sum(row[:1] == ["Redis"] and row[1] != "baseline" for row in rows)
    assert redis_rows == 2 or "Redis baseline skipped" in result.stdout, result.stdout
    shard_rows = [row for row in rows if len(row) > 1 and row[1] == "shard(s)"]
    assert [row[0] for row in shard_rows] == ["1", "2"] and shard_rows[0][-1] == "1.00x", result.stdout
