"""Checkpoints: periodic and final writes, exact restore (weights, optimizer slots, step
counts, reports, finished workers), a kill -9 between checkpoints, S3, and clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ps_service import checkpoint
from ps_service.client import PSClient
from ps_service.errors import PSError, PSStartupError
from ps_service.launcher import start_local_server
from ps_service.server import ParameterServer

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
SIZE = 23


def shard_documents(status: dict[str, Any]) -> list[dict[str, Any]]:
    return status["shards"] if isinstance(status["shards"], list) else [status]


def create_tables(client: PSClient, optimizer: str) -> None:
    client.create_table("model", SIZE, width=2, optimizer=optimizer, learning_rate=0.05,
                        initializer="normal", init_scale=0.1, seed=11, schedule="step", decay_steps=4)
    client.create_table("bias", 5, optimizer="sgd", learning_rate=0.5)


def push_step(client: PSClient, step: int) -> None:
    """Push number ``step`` of a deterministic sequence: replaying steps 0..u-1 reproduces the state."""
    rng = np.random.default_rng(1000 + step)
    keys = rng.integers(0, SIZE, 7)
    keys[0] = keys[1]
    client.push("model", keys, rng.standard_normal((7, 2)).astype(np.float32))


def checkpointed(client: PSClient, updates: int) -> bool:
    """Every shard has written a checkpoint that holds exactly ``updates`` updates."""
    return all(document["checkpoint"]["written"] >= 1 and document["checkpoint"]["last_updates"] == updates
               for document in shard_documents(client.status()))


def reports(status: dict[str, Any], table: str) -> list[tuple]:
    return [(r["t"], r["worker"], r["name"], r["value"], r["count"]) for r in status["tables"][table]["reports"]]


def table_updates(status: dict[str, Any]) -> dict[str, int]:
    return {name: table["updates"] for name, table in status["tables"].items()}


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "adagrad"])
@pytest.mark.parametrize("shards", [1, 2])
def test_periodic_checkpoint_restores_weights_slots_counts_and_reports(tmp_path, optimizer, shards, group, wait_for):
    uri = str(tmp_path / "ckpt")
    with group(shards, checkpoint_uri=uri, checkpoint_interval_s=0.1) as address, PSClient(address) as original:
        create_tables(original, optimizer)
        for step in range(12):
            push_step(original, step)
        original.push("bias", [0, 4, 4], [1.0, 2.0, 3.0])
        original.report("model", "train_loss", 0.5, count=32, worker="w-1")
        wait_for(lambda: checkpointed(original, 13), "a checkpoint of all 13 updates")
        expected_files = {checkpoint.shard_uri(uri, shard, shards).rsplit("/", 1)[1] for shard in range(shards)}
        assert {path.name for path in (tmp_path / "ckpt").iterdir()} == expected_files
        status = original.status()
        assert status["checkpoint"]["uri"] == uri and status["checkpoint"]["last_error"] is None

        with group(shards, restore_uri=uri) as restored_address, PSClient(restored_address) as restored:
            restored_status = restored.status()
            assert restored_status["updates"] == 13
            assert table_updates(restored_status) == table_updates(status) == {"model": 12, "bias": 1}
            for name in ("model", "bias"):
                assert restored_status["tables"][name]["spec"] == status["tables"][name]["spec"]
                np.testing.assert_array_equal(restored.get_table(name), original.get_table(name))
            assert reports(restored_status, "model") == reports(status, "model")
            assert not restored.create_table("bias", 5, optimizer="sgd", learning_rate=0.5)["created"]
            # the optimizer slots and step counts came back too: the same pushes keep both equal
            for step in range(12, 20):
                push_step(original, step)
                push_step(restored, step)
            np.testing.assert_array_equal(restored.get_table("model"), original.get_table("model"))
            assert restored.status()["updates"] == original.status()["updates"] == 21


def uninterrupted(optimizer: str, steps: int) -> np.ndarray:
    """The model table after pushes 0..steps-1 on a server that never stopped."""
    with ParameterServer() as reference, PSClient(reference.address) as client:
        create_tables(client, optimizer)
        for step in range(steps):
            push_step(client, step)
        return client.get_table("model")


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_graceful_shutdown_writes_a_final_checkpoint_with_the_last_pushes(tmp_path, optimizer, group):
    uri = str(tmp_path / "ckpt")
    with group(checkpoint_uri=uri, checkpoint_interval_s=60) as address, PSClient(address) as client:
        create_tables(client, optimizer)
        for step in range(5):
            push_step(client, step)
        assert client.status()["checkpoint"]["written"] == 0
    with group(restore_uri=uri, checkpoint_uri=uri) as address, PSClient(address) as client:
        assert client.status()["updates"] == 5
        np.testing.assert_array_equal(client.get_table("model"), uninterrupted(optimizer, 5))
        for step in range(5, 9):
            push_step(client, step)
    with group(restore_uri=uri) as address, PSClient(address) as client:
        assert client.status()["updates"] == 9
        np.testing.assert_array_equal(client.get_table("model"), uninterrupted(optimizer, 9))


def test_reports_and_finished_workers_after_the_last_periodic_checkpoint_are_kept_at_shutdown(tmp_path, group,
                                                                                               wait_for):
    """Neither is a push, but both are part of a checkpoint: a graceful stop must not drop them."""
    uri = str(tmp_path / "ckpt")
    with group(checkpoint_uri=uri, checkpoint_interval_s=0.1) as address, PSClient(address) as client:
        create_tables(client, "sgd")
        push_step(client, 0)
        wait_for(lambda: checkpointed(client, 1), "the periodic checkpoint")
        with PSClient(address) as worker:
            worker.register("run-1", "w-0", 0)
            worker.push("bias", [1], [1.0])
            worker.deregister("finished")
        wait_for(lambda: checkpointed(client, 2), "the periodic checkpoint of the worker's push")
        client.report("model", "test_loss", 0.25, count=100)
        with PSClient(address) as worker:
            worker.register("run-1", "w-1", 3)
            worker.deregister("handover")
        written = client.status()["checkpoint"]["written"]
    with group(restore_uri=uri) as address, PSClient(address) as client:
        status = client.status()
        assert [(r["name"], r["value"], r["count"]) for r in status["tables"]["model"]["reports"]] == [
            ("test_loss", 0.25, 100)]
        with PSClient(address) as retried, pytest.raises(PSError, match="already finished"):
            retried.register("run-1", "w-0", 0)
        with PSClient(address) as retried, pytest.raises(PSError, match="handed over; start generation 4"):
            retried.register("run-1", "w-1", 3)
        with PSClient(address) as successor:
            successor.register("run-1", "w-1", 4)
    assert written >= 2


def test_a_write_in_flight_at_shutdown_cannot_overwrite_the_final_checkpoint(tmp_path, monkeypatch, group):
    """The periodic write of an older snapshot is slow and still running when the server
    stops; the final checkpoint (with the last push) must be what stays on storage."""
    uri = str(tmp_path / "ckpt")
    real_write = checkpoint.write
    slow_started, final_written = threading.Event(), threading.Event()
    calls = []

    def write(snapshot: checkpoint.Snapshot, base: str) -> str:
        calls.append(snapshot.updates)
        if snapshot.updates == 1 and not slow_started.is_set():
            slow_started.set()
            final_written.wait(1)  # a correct server starts the final write only after this one
            return real_write(snapshot, base)
        result = real_write(snapshot, base)
        if snapshot.updates == 2:
            final_written.set()
        return result

    monkeypatch.setattr(checkpoint, "write", write)
    with group(checkpoint_uri=uri, checkpoint_interval_s=0.1) as address, PSClient(address) as client:
        create_tables(client, "adam")
        push_step(client, 0)
        assert slow_started.wait(10)
        push_step(client, 1)
    assert calls[-1] == 2
    assert checkpoint.read(uri, 0, 1).updates == 2


def test_kill_minus_nine_between_checkpoints_loses_at_most_one_interval(tmp_path, wait_for):
    uri = str(tmp_path / "ckpt")
    caught_up, more = 20, 30
    server = start_local_server(token="t", checkpoint_uri=uri, checkpoint_interval_s=0.3)
    try:
        with PSClient(server.address, token="t") as client:
            create_tables(client, "adam")
            for step in range(caught_up):
                push_step(client, step)
            wait_for(lambda: client.status()["checkpoint"]["last_updates"] == caught_up, "the checkpoint")
            for step in range(caught_up, caught_up + more):
                push_step(client, step)
        os.kill(server.pid, signal.SIGKILL)
        wait_for(lambda: not server.running, "the killed server to exit")
    finally:
        server.stop()
    with start_local_server(token="t", restore_uri=uri) as restored, PSClient(restored.address, token="t") as client:
        updates = client.status()["updates"]
        assert caught_up <= updates <= caught_up + more
        np.testing.assert_array_equal(client.get_table("model"), uninterrupted("adam", updates))
        np.testing.assert_array_equal(client.get_table("bias"), np.zeros((5, 1), dtype=np.float32))


@pytest.fixture
def moto_s3(moto_server, monkeypatch):
    """The moto server reached through boto3's default chain, which is what the server uses."""
    boto3 = pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bucket")
    return s3


@pytest.mark.parametrize("shards", [1, 2])
def test_checkpoint_to_s3_and_restore_from_it(moto_s3, shards, group, wait_for):
    uri = f"s3://bucket/runs/{shards}/ckpt"  # moto's state outlives its server: one prefix per case
    with group(shards, checkpoint_uri=uri, checkpoint_interval_s=0.1) as address, PSClient(address) as client:
        create_tables(client, "adam")
        for step in range(6):
            push_step(client, step)
        wait_for(lambda: checkpointed(client, 6), "a checkpoint on S3")
        push_step(client, 6)
    listing = moto_s3.list_objects_v2(Bucket="bucket", Prefix=f"runs/{shards}/")
    keys = sorted(item["Key"] for item in listing["Contents"])
    assert keys == [f"runs/{shards}/ckpt/shard-{shard:03d}-of-{shards:03d}.npz" for shard in range(shards)]
    with group(shards, restore_uri=uri) as address, PSClient(address) as client:
        assert client.status()["updates"] == 7
        np.testing.assert_array_equal(client.get_table("model"), uninterrupted("adam", 7))
    with pytest.raises(PSStartupError, match="s3://bucket/runs/missing"):
        with group(shards, restore_uri="s3://bucket/runs/missing"):
            pass


@pytest.fixture
def written_checkpoint(tmp_path, group) -> str:
    uri = str(tmp_path / "ckpt")
    with group(checkpoint_uri=uri) as address, PSClient(address) as client:
        create_tables(client, "adam")
        push_step(client, 0)
    return uri


def test_restore_from_a_missing_checkpoint_is_a_startup_error_naming_the_uri(tmp_path):
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(PSStartupError, match=f"cannot restore shard 0 of 1 from {missing}.*no checkpoint was found"):
        ParameterServer(restore_uri=missing).start_in_thread()


def test_module_with_a_missing_checkpoint_exits_1_naming_the_uri(tmp_path):
    missing = str(tmp_path / "nothing-here")
    result = subprocess.run([sys.executable, "-m", "ps_service", "--restore", missing], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "listening on" not in result.stdout
    assert f"ps_service: cannot restore shard 0 of 1 from {missing}" in result.stderr
    assert "Traceback" not in result.stderr


def test_restore_with_another_shard_count_says_what_the_checkpoint_holds(written_checkpoint):
    with pytest.raises(PSStartupError, match=r"shard 0 of 2 .*it holds shard-000-of-001\.npz.*same --shards"):
        ParameterServer(shard=0, shards=2, restore_uri=written_checkpoint).start_in_thread()


def test_restore_of_a_checkpoint_renamed_to_another_shard_is_refused(written_checkpoint):
    source = Path(checkpoint.shard_uri(written_checkpoint, 0, 1))
    Path(checkpoint.shard_uri(written_checkpoint, 1, 2)).write_bytes(source.read_bytes())
    with pytest.raises(PSStartupError, match="was written by shard 0 of 1, not shard 1 of 2"):
        ParameterServer(shard=1, shards=2, restore_uri=written_checkpoint).start_in_thread()


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda data: b"not a checkpoint at all" * 10,
    "empty": lambda data: b"",
    "truncated": lambda data: data[: len(data) // 2],
    "cut before the directory": lambda data: data[:-30],
    "flipped bytes": lambda data: data[:40] + bytes(byte ^ 0xFF for byte in data[40:200]) + data[200:],
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS), ids=list(CORRUPTIONS))
def test_restore_of_a_corrupt_checkpoint_is_a_clear_startup_error(written_checkpoint, corrupt):
    path = Path(checkpoint.shard_uri(written_checkpoint, 0, 1))
    path.write_bytes(CORRUPTIONS[corrupt](path.read_bytes()))
    with pytest.raises(PSStartupError, match=f"checkpoint {path} is damaged or not a parameter-server checkpoint"):
        ParameterServer(restore_uri=written_checkpoint).start_in_thread()


def test_module_with_a_corrupt_checkpoint_exits_1_naming_it(written_checkpoint):
    path = Path(checkpoint.shard_uri(written_checkpoint, 0, 1))
    path.write_bytes(CORRUPTIONS["truncated"](path.read_bytes()))
    result = subprocess.run([sys.executable, "-m", "ps_service", "--restore", written_checkpoint], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"ps_service: checkpoint {path} is damaged" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("server_kind", ["fresh", "restored and only read"])
def test_a_server_that_changed_nothing_leaves_the_checkpoint_alone(written_checkpoint, server_kind):
    path = Path(checkpoint.shard_uri(written_checkpoint, 0, 1))
    before = path.read_bytes(), path.stat().st_mtime_ns
    options: dict[str, Any] = {"checkpoint_uri": written_checkpoint, "checkpoint_interval_s": 0.05}
    if server_kind != "fresh":
        options["restore_uri"] = written_checkpoint
    server = ParameterServer(**options)
    with server, PSClient(server.address) as client:
        if server_kind != "fresh":
            assert client.pull("model", [0, 1]).shape == (2, 2)
            client.get_table("model")
        give_up = time.monotonic() + 0.3  # several checkpoint intervals pass with nothing to write
        while time.monotonic() < give_up:
            assert client.status()["checkpoint"]["written"] == 0
            time.sleep(0.05)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert checkpoint.read(written_checkpoint, 0, 1).updates == 1


def test_a_failing_checkpoint_is_shown_in_status_and_the_server_keeps_serving(tmp_path, group, wait_for):
    blocker = tmp_path / "a-file"
    blocker.write_text("checkpoints cannot go under a file")
    uri = str(blocker / "ckpt")
    with group(checkpoint_uri=uri, checkpoint_interval_s=0.1) as address, PSClient(address) as client:
        create_tables(client, "sgd")
        push_step(client, 0)
        error = wait_for(lambda: client.status()["checkpoint"]["last_error"], "the checkpoint error")
        assert uri in error
        assert client.status()["checkpoint"]["written"] == 0
        push_step(client, 1)
        assert client.status()["updates"] == 2
