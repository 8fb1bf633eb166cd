"""Training end to end on the embedded backends: the local Lambda runtime (worker
processes behind the Invoke API, through boto3) and a parameter server process."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingError, TrainingJob


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_synthetic_criteo(Storage(), str(root / "clicks.tsv"), rows=40_000, seed=5)
    config = PreprocessConfig(inputs=[str(root / "clicks.tsv")], output=str(root / "shards"), hash_bits=16,
                              workers=3, row_group_rows=2000, shard_rows=8000)
    with LocalLambdaExecutor(function=FunctionConfig(concurrency=3)) as executor:
        summary = run_preprocess(config, storage=Storage(), executor=executor)
    return root / "shards", summary


def _children() -> list[str]:
    """Command lines of this process's live child processes."""
    out = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except FileNotFoundError:
                pass
    return out


def _executor(**function):
    return LocalLambdaExecutor(function=FunctionConfig(**{"concurrency": 3, **function}))


def test_training_beats_the_base_rate_and_leaves_a_model(shards, tmp_path):
    data, prep = shards
    with _executor() as executor:
        summary = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=3, epochs=2,
                                          poll_interval_s=0.2),
                              storage=Storage(), executor=executor).run()
    assert summary["examples"] == 2 * prep["train_rows"]
    assert summary["stopped_by"] == "epochs" and summary["invocations"] == 3
    assert summary["test_rows"] == prep["test_rows"]
    assert summary["test_auc"] > 0.68
    assert summary["test_logloss"] < summary["baseline_logloss"] - 0.02
    assert summary["test_accuracy"] > 0.75
    assert (tmp_path / "run" / "model" / "weights.npy").exists()
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["transform"]["hash_bits"] == 16 and "ps_token" not in meta["config"]
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert curve and curve[-1]["updates"] > 0
    # Each poll asks the server only for reports newer than the last it saw: every worker's
    # report of training loss counts once, and together they cover every example trained.
    assert sum(point["examples"] for point in curve) == summary["examples"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model_uri"] == summary["model_uri"]
    assert json.dumps(summary)  # XCom-able: plain JSON
    cost = summary["cost"]  # 3 workers of 1,024 MB (the function's size) and one server process
    assert summary["estimated_cost_usd"] == cost["total_usd"] > 0
    assert cost["lambda_compute_usd"] == pytest.approx(
        summary["worker_seconds"] * 1.0 * 0.0000166667, rel=0.5)  # plus the final evaluation's seconds
    assert cost["s3_requests_usd"] > 0 and cost["parameter_server_usd"] > 0


def test_training_runs_on_a_sharded_parameter_server_with_adam(shards, tmp_path, inline_executor):
    data, prep = shards
    job = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=1,
                                  optimizer="adam", learning_rate=0.01, ps_shards=2, poll_interval_s=0.2),
                      storage=Storage(), executor=inline_executor)
    summary = job.run()
    assert summary["examples"] == prep["train_rows"]
    assert summary["test_auc"] > 0.68
    assert not [c for c in _children() if "ps_service" in c]  # both shard processes stopped


def test_workers_hand_over_before_the_lambda_time_limit(shards, tmp_path):
    data, prep = shards
    # Invocations may work for 0.5 s each; the run needs several seconds of work.
    with _executor(timeout_s=3) as executor:
        summary = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=20,
                                          poll_interval_s=0.2, handover_margin_s=2.5),
                              storage=Storage(), executor=executor).run()
    assert summary["invocations"] >= 6  # fresh invocations took over
    assert summary["examples"] == 20 * prep["train_rows"]  # and none lost or repeated work
    assert summary["test_auc"] > 0.68


def test_time_budget_stops_training(shards, tmp_path):
    data, _ = shards
    with _executor() as executor:
        summary = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=10_000,
                                          time_budget_s=3, poll_interval_s=0.2),
                              storage=Storage(), executor=executor).run()
    assert summary["stopped_by"] == "time_budget"
    assert summary["train_seconds"] < 60


def test_cancel_stops_workers_and_the_parameter_server(shards, tmp_path):
    data, _ = shards
    executor = _executor()
    points = []
    job = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=10_000,
                                  poll_interval_s=0.2),
                      storage=Storage(), executor=executor, progress=points.append)
    started = threading.Event()
    timer = threading.Thread(target=lambda: (started.wait(60), job.cancel()))
    original = job.progress
    job.progress = lambda p: (original(p), p["updates"] > 0 and started.set())
    timer.start()
    with executor, pytest.raises(TrainingError, match="cancelled"):
        job.run()
    timer.join()
    assert started.is_set()
    assert not (tmp_path / "run" / "model").exists()
    leftovers = [c for c in _children() if "ps_service" in c or "local_worker" in c]
    assert leftovers == []


def test_a_worker_that_keeps_failing_fails_the_run_with_its_name(shards, tmp_path, inline_executor):
    data, _ = shards
    victim = sorted((data / "shards").iterdir())[0]
    saved = victim.read_bytes()
    victim.write_bytes(b"not parquet")
    try:
        with pytest.raises(TrainingError, match=r"worker 0 \(generation 2\) failed \(StorageError: .*part-00000"
                                                r".*replaced 2 times already: giving up"):
            TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=1,
                                    max_replacements=2),
                        storage=Storage(), executor=inline_executor).run()
    finally:
        victim.write_bytes(saved)
    assert [c for c in _children() if "ps_service" in c] == []


def test_runs_on_a_shared_server_get_tables_of_their_own(shards, tmp_path, inline_executor, monkeypatch):
    from ps_service.client import PSClient
    from ps_service.server import ParameterServer

    import cirrus_airflow.training as training

    monkeypatch.setattr(training, "_FETCH_KEYS", 1000)  # the weights come back in many pulls
    data, prep = shards
    with ParameterServer(token="shared") as server:
        def run(output):
            config = TrainConfig(data=str(data), output=str(output), workers=2, epochs=1,
                                 ps_address=server.address, ps_token="shared")
            job = TrainingJob(config, storage=Storage(), executor=inline_executor)
            return job, job.run()

        first_job, first = run(tmp_path / "a")
        with PSClient(server.address, token="shared") as client:
            assert first_job.table not in client.status()["tables"]  # dropped once its weights were saved
            client.create_table("left-by-a-killed-run", 10)
            client.stop("left-by-a-killed-run")
        second_job, second = run(tmp_path / "b")
        assert second_job.table != first_job.table
        assert second["examples"] == first["examples"] == prep["train_rows"]
        assert second["stopped_by"] == "epochs"
        assert abs(second["test_auc"] - first["test_auc"]) < 0.02


def test_a_handover_margin_beyond_the_time_limit_is_refused(shards, tmp_path):
    data, _ = shards
    with _executor(timeout_s=5) as executor, pytest.raises(ValueError, match=r"less than the workers' time limit \(5 s\)"):
        TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run")), storage=Storage(), executor=executor)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "rmsprop", "optimizer must be one of"),
    ("workers", 0, "workers must be at least 1"),
    ("learning_rate", -1.0, "learning_rate must be a positive number"),
    ("time_budget_s", 0, "time_budget_s must be positive"),
])
def test_parameters_are_validated_early(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data="d", output="o", **{field: value}).validate()


def _worker_pids() -> list[int]:
    """This process's local Lambda runtime worker processes."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"local_worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
            except FileNotFoundError:
                pass
    return pids


def _train_in_background(job: TrainingJob) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = job.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _when_training(job: TrainingJob, points: list) -> None:
    """Wait until the workers have pushed updates and written their journals."""
    deadline = time.monotonic() + 60
    while not (points and points[-1]["updates"] > 50 and len(list(job_progress(job).glob("*.json"))) == 2):
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


def job_progress(job: TrainingJob) -> Path:
    return Path(job.config.output) / "_progress"


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGSTOP"])
def test_a_crashed_or_silent_worker_is_replaced_and_no_work_is_lost(shards, tmp_path, signal_name):
    data, prep = shards
    points: list = []
    with _executor(timeout_s=12) as executor:
        job = TrainingJob(TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=25,
                                      poll_interval_s=0.1, handover_margin_s=2, worker_silence_s=1.5,
                                      eval_interval_s=None),
                          storage=Storage(), executor=executor, progress=points.append)
        thread, outcome = _train_in_background(job)
        _when_training(job, points)
        victims = _worker_pids()
        assert len(victims) == 2  # a fresh runtime: the two training invocations, nothing idle
        for pid in victims:
            os.kill(pid, getattr(signal, signal_name))
        thread.join(120)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary["replacements"] == 2
    # The replacements started where the journals said: every example counted once, none skipped.
    assert summary["examples"] == 25 * prep["train_rows"]
    assert summary["test_auc"] > 0.68


def test_a_retry_after_a_killed_run_resumes_from_its_checkpoint(shards, tmp_path):
    data, prep = shards
    config = TrainConfig(data=str(data), output=str(tmp_path / "run"), workers=2, epochs=30, poll_interval_s=0.1,
                         checkpoint_interval_s=0.3, worker_silence_s=2, eval_interval_s=None)
    points: list = []
    with _executor() as executor:  # the first attempt is killed (on_kill: cancel) mid-run
        job = TrainingJob(config, storage=Storage(), executor=executor, progress=points.append)
        thread, outcome = _train_in_background(job)
        _when_training(job, points)
        time.sleep(0.5)  # a checkpoint or two
        job.cancel()
        thread.join(60)
    assert isinstance(outcome.get("error"), TrainingError)
    run = tmp_path / "run"
    assert (run / "_attempt.json").exists() and list((run / "_checkpoint").iterdir())
    done_before = sum(json.loads(p.read_text())["examples"] for p in (run / "_progress").glob("*.json"))
    assert 0 < done_before < 30 * prep["train_rows"]

    retry_points: list = []
    with _executor() as executor:  # Airflow's retry: the same task, the same output
        summary = TrainingJob(config, storage=Storage(), executor=executor, progress=retry_points.append).run()
    assert summary["resumed"] and summary["examples"] == 30 * prep["train_rows"]
    assert retry_points[0]["updates"] > 0  # the table came back from the checkpoint, updates and all
    assert summary["test_auc"] > 0.68
    # A finished run leaves nothing to resume: running the task again trains afresh.
    assert not any((run / name).exists() for name in ("_attempt.json", "_checkpoint", "_progress"))
