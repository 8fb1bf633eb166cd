"""bench.tune runs both searches end to end on a tiny input and prints its table (figures
from so small a run mean nothing: only the shape is checked)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_both_searches_print_worker_seconds_and_the_best_loss():
    run = subprocess.run([sys.executable, "-m", "bench.tune", "--rows", "4000", "--epochs", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "grid of 12 lr configurations" in out
    assert re.search(r"full grid\s+[\d.]+\s+100%\s+[\d.]+\s+0\s+0\.\d{4}\s+\+0\.00%", out), out
    assert re.search(r"ASHA \(eta 3, grace 1 s\)\s+[\d.]+\s+\d+%\s+[\d.]+\s+\d+\s+0\.\d{4}\s+[+-]\d+\.\d\d%", out), out
