"""bench.quality runs end to end on data laid out like ../shared/data (generated here, so the
figures mean nothing: only the table's shape is checked) and skips what is absent."""

import re
import subprocess
import sys
from pathlib import Path

from cirrus_airflow.datasets import write_synthetic_libsvm, write_synthetic_ratings
from cirrus_airflow.storage import Storage

ROOT = Path(__file__).resolve().parents[2]


def _quality(data: Path) -> str:
    run = subprocess.run([sys.executable, "-m", "bench.quality", "--data", str(data)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_every_case_prints_its_metric_against_the_target(tmp_path):
    write_synthetic_libsvm(Storage(), str(tmp_path / "a9a"), rows=3000, features=123, seed=1)
    write_synthetic_libsvm(Storage(), str(tmp_path / "a9a.t"), rows=1000, features=123, seed=2)
    write_synthetic_ratings(Storage(), str(tmp_path / "movielens-small" / "ratings.csv"), users=100, items=200,
                            rows=5000, seed=3)
    out = _quality(tmp_path)
    assert re.search(r"a9a, lr\s+test_accuracy\s+0\.\d{4}\s+0\.848\s+(yes|NO)\s+[\d.]+\s+[\d,]+", out), out
    assert re.search(r"MovieLens small, mf\s+test_rmse\s+\d\.\d{4}\s+0\.880\s+(yes|NO)", out), out


def test_absent_data_is_skipped(tmp_path):
    out = _quality(tmp_path)
    assert out.count(" skipped: ") == 2
