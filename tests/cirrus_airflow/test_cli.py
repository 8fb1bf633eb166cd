"""The cirrus-airflow command line, run as users run it."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("cirrus-airflow"))


def _run(*args, check=True):
    out = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _last_json(out):
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_generate_preprocess_train_with_json_results(tmp_path):
    _run("generate", "--output", str(tmp_path / "raw.tsv"), "--rows", "20000", "--seed", "4")
    prep = _last_json(_run("preprocess", "--input", str(tmp_path / "raw.tsv"), "--output", str(tmp_path / "shards"),
                           "--hash-bits", "14", "--workers", "2", "--concurrency", "2", "--json"))
    assert {"rows_read", "rows_written", "rows_rejected", "rejected_by_reason", "shards", "manifest_uri"} <= set(prep)
    assert prep["rows_read"] == 20_000
    out = _run("train", "--data", str(tmp_path / "shards"), "--output", str(tmp_path / "run"), "--workers", "2",
               "--concurrency", "2", "--epochs", "2", "--json")
    result = _last_json(out)
    assert {"test_logloss", "test_auc", "test_accuracy", "examples_per_second", "model_uri"} <= set(result)
    assert result["test_logloss"] < result["baseline_logloss"]
    # A worker trains faster in its loop than the run's rate, which counts start-ups and 2 workers' sharing.
    assert result["worker_loop_examples_per_second"] > result["examples_per_second"] / result["workers"] > 0
    assert "train" in out.stderr  # progress went to stderr, not into the JSON
    table = _run("report", str(tmp_path / "run")).stdout
    assert "test AUC" in table and f"{result['test_auc']:.4f}" in table


@pytest.mark.parametrize("args, message", [
    (["preprocess", "--input", "/nonexistent/x.tsv", "--output", "/tmp/o"], "no such file"),
    (["preprocess", "--input", "x", "--output", "o", "--hash-bits", "99"], "hash_bits must be between"),
    (["train", "--data", "/nonexistent", "--output", "/tmp/o"], "preprocessing has not finished there"),
    (["report", "/nonexistent"], "is it the output of a finished training run"),
])
def test_bad_input_exits_2_with_one_clear_line(args, message):
    out = _run(*args, check=False)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def _serve(*args):
    """Start a long-running subcommand; returns the process and its first stdout line."""
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_lambda_serve_answers_the_invoke_api():
    import boto3

    proc, line = _serve("lambda", "serve", "--port", "0", "--worker-timeout", "30")
    try:
        url = line.rsplit(" ", 1)[-1]
        assert line.startswith("serving function 'cirrus-worker' on http://127.0.0.1:")
        client = boto3.client("lambda", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x")
        reply = client.invoke(FunctionName="cirrus-worker", Payload=json.dumps({"task": "nope"}))
        assert reply["FunctionError"] == "Unhandled"
        assert "unknown task 'nope'" in json.loads(reply["Payload"].read())["errorMessage"]
    finally:
        _stop(proc)


def test_ps_serve_listens_with_a_token(tmp_path):
    from ps_service.client import PSClient
    from ps_service.errors import PSAuthError

    (tmp_path / "token").write_text("s3cret\n")
    proc, line = _serve("ps", "serve", "--port", "0", "--token-file", str(tmp_path / "token"))
    try:
        assert line.startswith("listening on 127.0.0.1:")
        address = line.split()[-1]
        with PSClient(address, token="s3cret") as client:
            assert client.status()["tables"] == {}
        with pytest.raises(PSAuthError):
            PSClient(address, token="wrong").status()
    finally:
        _stop(proc)


def test_ps_serve_starts_a_sharded_group_that_checkpoints(tmp_path):
    import numpy as np

    from ps_service.client import PSClient

    (tmp_path / "token").write_text("s3cret\n")
    checkpoints = tmp_path / "ckpt"
    proc, line = _serve("ps", "serve", "--shards", "2", "--token-file", str(tmp_path / "token"),
                        "--checkpoint-uri", str(checkpoints), "--checkpoint-interval", "30")
    try:
        addresses = line.removeprefix("listening on ").split(",")
        assert line.startswith("listening on ") and len(addresses) == 2
        with PSClient(",".join(addresses), token="s3cret") as client:
            client.create_table("w", 5, optimizer="sgd", learning_rate=1.0)
            client.push("w", [0, 1, 4], [1.0, 2.0, 3.0])
    finally:
        _stop(proc)
    # SIGTERM is a graceful shutdown: each shard wrote its final checkpoint.
    assert sorted(p.name for p in checkpoints.iterdir()) == ["shard-000-of-002.npz", "shard-001-of-002.npz"]
    proc, line = _serve("ps", "serve", "--shards", "2", "--token-file", str(tmp_path / "token"),
                        "--restore", str(checkpoints))
    try:
        with PSClient(line.removeprefix("listening on "), token="s3cret") as client:
            np.testing.assert_array_equal(client.get_table("w")[:, 0], [-1, -2, 0, 0, -3])
    finally:
        _stop(proc)


def test_ps_serve_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    out = _run("ps", "serve", "--restore", str(tmp_path / "nothing-here"), check=False)
    assert out.returncode == 1
    assert "nothing-here" in out.stderr and "Traceback" not in out.stderr
