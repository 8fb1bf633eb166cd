"""``cirrus-airflow preprocess`` as users run it: every format and transformation flag,
the JSON summary, the progress bar on a terminal, and one-line errors."""

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from cirrus_airflow.datasets import write_synthetic_libsvm, write_synthetic_ratings
from cirrus_airflow.storage import Storage

CLI = str(Path(sys.executable).with_name("cirrus-airflow"))
SUMMARY = {"rows_read", "rows_written", "rows_rejected", "rejected_by_reason", "shards", "manifest_uri"}


def _run(*args, check=True):
    out = subprocess.run([CLI, "preprocess", *args, "--executor", "local", "--concurrency", "2"],
                         capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _json(out):
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_libsvm_with_a_test_input(tmp_path):
    write_synthetic_libsvm(Storage(), str(tmp_path / "train.svm"), rows=3000, features=80, seed=1)
    write_synthetic_libsvm(Storage(), str(tmp_path / "test.svm"), rows=1000, features=80, seed=2)
    summary = _json(_run("--input", str(tmp_path / "train.svm"), "--test-input", str(tmp_path / "test.svm"),
                         "--output", str(tmp_path / "out"), "--format", "libsvm", "--num-features", "80",
                         "--normalize", "none", "--json"))
    assert SUMMARY <= set(summary)
    assert (summary["train_rows"], summary["test_rows"], summary["feature_dim"]) == (3000, 1000, 80)
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["split"]["method"] == "inputs" and manifest["transform"]["normalize"] == "none"


def test_csv_with_a_schema_and_every_transformation_flag(tmp_path):
    rows = ["y,amount,visits,country,device"] + [
        f"{i % 2},{i * 0.5},{'' if i % 9 == 0 else i % 13},c{i % 4},d{i % 11}" for i in range(2000)]
    (tmp_path / "in.csv").write_text("\n".join(rows) + "\n")
    summary = _json(_run("--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out"), "--format", "csv",
                         "--label", "y", "--numeric", "amount,visits", "--categorical", "country,device",
                         "--cross", "country,device", "--signed-hash", "--min-count", "5", "--missing", "impute",
                         "--normalize", "standard", "--no-log-counts", "--hash-bits", "12", "--shard-rows", "500",
                         "--row-group-rows", "100",
                         "--json"))
    assert summary["rows_written"] == 2000 and summary["shards"] >= 4
    transform = json.loads((tmp_path / "out" / "_manifest.json").read_text())["transform"]
    assert transform["crosses"] == [["country", "device"]] and transform["signed_hash"] is True
    assert (transform["min_count"], transform["missing"], transform["normalize"]) == (5, "impute", "standard")
    assert transform["log_transform"] is False and (tmp_path / "out" / transform["frequent_buckets"]).exists()


def test_ratings_with_named_columns(tmp_path):
    write_synthetic_ratings(Storage(), str(tmp_path / "r.csv"), users=50, items=80, rows=2000, seed=3)
    text = (tmp_path / "r.csv").read_text().replace("userId,movieId,rating", "who,what,stars", 1)
    (tmp_path / "r.csv").write_text(text)
    summary = _json(_run("--input", str(tmp_path / "r.csv"), "--output", str(tmp_path / "out"), "--format",
                         "ratings", "--columns", "who,what,stars", "--json"))
    assert summary["rows_written"] == 2000 and summary["format"] == "ratings"


def test_a_progress_bar_on_a_terminal(tmp_path):
    write_synthetic_libsvm(Storage(), str(tmp_path / "a.svm"), rows=500, seed=1)
    leader, follower = pty.openpty()
    proc = subprocess.run([CLI, "preprocess", "--input", str(tmp_path / "a.svm"), "--output", str(tmp_path / "o"),
                           "--format", "libsvm", "--executor", "local", "--json"],
                          stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300)
    os.close(follower)
    drawn = b""
    try:
        while chunk := os.read(leader, 65536):
            drawn += chunk
    except OSError:  # the terminal closed once the process was gone
        pass
    assert proc.returncode == 0
    for stage in (b"statistics", b"transform", b"shards"):
        assert stage in drawn
    assert b"\r" in drawn and b"[" + b"#" * 30 + b"]" in drawn
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows_written"] == 500  # stdout stays clean


@pytest.mark.parametrize("args, message", [
    (["--input", "x", "--output", "o", "--cross", "C1"], "--cross takes 2 comma-separated column names"),
    (["--input", "x", "--output", "o", "--format", "csv"], "needs a schema"),
    (["--input", "x", "--output", "o", "--test-input", "t", "--test-fraction", "0.1"], "either test_inputs or"),
    (["--input", "x", "--output", "o", "--cross", "C1,C99"], "'C99' is not a categorical column"),
    (["--input", "x", "--output", "o", "--format", "ratings", "--columns", "a,b"], "takes 3 comma-separated"),
])
def test_bad_flags_exit_2_with_one_clear_line(args, message):
    out = _run(*args, check=False)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
