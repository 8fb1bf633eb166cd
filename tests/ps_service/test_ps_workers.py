"""Workers: registration (one holder per slot and generation, see ps_service/workers.py)
and concurrent pushes from several processes, none of which may be lost."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ps_service.client import PSClient
from ps_service.errors import PSError
from ps_service.launcher import start_local_server

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
RUN = "run-7"


@pytest.fixture
def address(group) -> Iterator[str]:
    with group() as started:
        with PSClient(started) as admin:
            admin.create_table("w", 10, learning_rate=1.0)
        yield started


@pytest.fixture
def connect(address) -> Iterator[Callable[[], PSClient]]:
    """Open as many clients (one per would-be worker invocation) as a test needs."""
    clients: list[PSClient] = []

    def open_client() -> PSClient:
        clients.append(PSClient(address))
        return clients[-1]

    yield open_client
    for client in clients:
        client.close()


def worker_states(client: PSClient, worker: str = "w-0") -> list[tuple[int, str]]:
    return [(entry["generation"], entry["state"]) for entry in client.status()["workers"]
            if entry["worker"] == worker]


def test_registration_is_confirmed_and_listed_in_status(connect):
    first, admin = connect(), connect()
    assert first.register(RUN, "w-0", 0) == {"run": RUN, "worker": "w-0", "generation": 0}
    assert connect().register(RUN, 3, 2) == {"run": RUN, "worker": "3", "generation": 2}
    status = admin.status()
    assert status["registered_workers"] == 2
    [entry] = [entry for entry in status["workers"] if entry["worker"] == "w-0"]
    assert entry["run"] == RUN and entry["generation"] == 0 and entry["state"] == "active"
    assert 0 <= entry["heartbeat_age_s"] < 30
    assert entry["peer"].startswith("127.0.0.1:")


def test_a_duplicate_of_a_live_generation_is_refused(connect):
    holder, duplicate = connect(), connect()
    holder.register(RUN, "w-0", 1)
    with pytest.raises(PSError, match="generation 1 is already registered and alive.*duplicate invocation"):
        duplicate.register(RUN, "w-0", 1)
    holder.push("w", [1], [1.0])  # the holder keeps its slot
    assert worker_states(holder) == [(1, "active")]


def test_a_newer_generation_supersedes_and_the_old_holders_work_is_refused(connect):
    old, new, admin = connect(), connect(), connect()
    old.register(RUN, "w-0", 0)
    old.push("w", [0], [1.0])
    new.register(RUN, "w-0", 1)
    for refused in (lambda: old.push("w", [0], [1.0]), lambda: old.push_pull("w", [0], [1.0], [0]),
                    old.heartbeat, lambda: old.deregister("finished")):
        with pytest.raises(PSError, match="generation 0 of run 'run-7' was superseded"):
            refused()
    new.push("w", [0], [1.0])
    np.testing.assert_array_equal(admin.pull("w", [0]), [[-2.0]])
    assert worker_states(admin) == [(1, "active")]
    assert admin.status()["registered_workers"] == 1


def test_an_older_generation_is_refused(connect):
    connect().register(RUN, "w-0", 2)
    with pytest.raises(PSError, match="held by generation 2; generation 1 is stale"):
        connect().register(RUN, "w-0", 1)


def test_a_finished_generation_is_not_run_again_but_a_newer_one_may(connect):
    worker, admin = connect(), connect()
    worker.register(RUN, "w-0", 0)
    worker.push("w", [2], [1.0])
    worker.deregister("finished")
    assert worker_states(admin) == [(0, "finished")]
    assert admin.status()["registered_workers"] == 0
    with pytest.raises(PSError, match="already deregistered \\(finished\\)"):
        worker.push("w", [2], [1.0])
    for retry in (worker, connect()):
        with pytest.raises(PSError, match="generation 0 already finished its work"):
            retry.register(RUN, "w-0", 0)
    connect().register(RUN, "w-0", 1)
    assert worker_states(admin) == [(1, "active")]


def test_a_handover_admits_the_next_generation_only(connect):
    worker = connect()
    worker.register(RUN, "w-0", 4)
    worker.deregister("handover")
    with pytest.raises(PSError, match="generation 4 handed over; start generation 5 instead"):
        connect().register(RUN, "w-0", 4)
    successor = connect()
    successor.register(RUN, "w-0", 5)
    successor.push("w", [3], [1.0])
    assert worker_states(successor) == [(5, "active")]


def test_after_the_holder_disconnects_the_same_generation_may_retry(connect, wait_for):
    crashed, admin = connect(), connect()
    crashed.register(RUN, "w-0", 0)
    crashed.close()
    wait_for(lambda: worker_states(admin) == [(0, "disconnected")], "the server to see the connection close")
    assert admin.status()["registered_workers"] == 0
    retry = connect()
    retry.register(RUN, "w-0", 0)
    retry.push("w", [1], [1.0])
    assert worker_states(admin) == [(0, "active")]


def test_heartbeats_keep_a_slot_and_their_expiry_frees_it(group, wait_for):
    with group(heartbeat_timeout_s=0.4) as address:
        with PSClient(address) as holder, PSClient(address) as admin:
            admin.create_table("w", 4)
            holder.register(RUN, "w-0", 0)
            for _ in range(4):  # 0.8 s in all: twice the timeout, kept alive by heartbeats and pulls
                holder.heartbeat()
                with PSClient(address) as duplicate, pytest.raises(PSError, match="already registered and alive"):
                    duplicate.register(RUN, "w-0", 0)
                holder.pull("w", [0])  # any request counts as a heartbeat
                time.sleep(0.2)
            wait_for(lambda: worker_states(admin) == [(0, "expired")], "the heartbeat to expire")
            assert admin.status()["registered_workers"] == 0
            entry = admin.status()["workers"][0]
            assert entry["heartbeat_age_s"] > 0.4
            with PSClient(address) as replacement:
                replacement.register(RUN, "w-0", 0)
                assert worker_states(admin) == [(0, "active")]
                with pytest.raises(PSError, match="superseded"):
                    holder.push("w", [0], [1.0])
                replacement.push("w", [0], [1.0])


def test_slots_are_per_run_and_worker(connect):
    connect().register(RUN, "w-0", 0)
    connect().register(RUN, "w-1", 0)
    connect().register("other-run", "w-0", 0)
    admin = connect()
    assert admin.status()["registered_workers"] == 3


def test_one_connection_holds_one_worker(connect):
    client = connect()
    client.register(RUN, "w-0", 0)
    with pytest.raises(PSError, match="already holds worker 'w-0' of run 'run-7'"):
        client.register(RUN, "w-1", 0)


def test_heartbeat_and_deregister_need_a_registration(connect):
    client = connect()
    with pytest.raises(PSError, match="heartbeat: this connection has not registered"):
        client.heartbeat()
    with pytest.raises(PSError, match="deregister: this connection has not registered"):
        client.deregister()
    client.register(RUN, "w-0", 0)
    with pytest.raises(PSError, match="reason must be one of finished, handover, got 'crashed'"):
        client.deregister("crashed")
    client.heartbeat()


@pytest.mark.parametrize(("run", "worker", "generation", "message"), [
    (RUN, "w-0", -1, "generation must be an integer >= 0"),
    (RUN, "w-0", True, "generation must be an integer >= 0"),
    (RUN, "w-0", 1.5, "generation must be an integer >= 0"),
    ("", "w-0", 0, "run must be a non-empty string or integer"),
    (RUN, None, 0, "worker must be a non-empty string or integer"),
    (RUN, "x" * 201, 0, "worker must be a non-empty string or integer"),
])
def test_bad_registrations_are_refused(connect, run, worker, generation, message):
    with pytest.raises(PSError, match=message):
        connect().register(run, worker, generation)


def test_a_group_client_registers_on_every_shard(group):
    with group(2) as address, PSClient(address) as worker, PSClient(address) as admin:
        admin.create_table("w", 5)
        worker.register(RUN, "w-0", 0)
        documents = admin.status()["shards"]
        assert [[(e["worker"], e["state"]) for e in document["workers"]] for document in documents] == [
            [("w-0", "active")]] * 2
        assert [document["registered_workers"] for document in documents] == [1, 1]
        with PSClient(address) as duplicate, pytest.raises(PSError, match="already registered and alive"):
            duplicate.register(RUN, "w-0", 0)
        with PSClient(address) as successor:
            successor.register(RUN, "w-0", 1)
            with pytest.raises(PSError, match="superseded"):
                worker.push("w", [0, 1, 2, 3], [1.0, 1.0, 1.0, 1.0])
            successor.deregister("finished")
        documents = admin.status()["shards"]
        assert [[(e["generation"], e["state"]) for e in document["workers"]] for document in documents] == [
            [(1, "finished")]] * 2
        np.testing.assert_array_equal(admin.get_table("w"), np.zeros((5, 1), dtype=np.float32))


# Concurrent pushes from several processes ------------------------------------------------

PROCESSES, PUSHES, KEYS_PER_PUSH, TABLE_SIZE = 4, 200, 6, 40


def worker_keys(worker: int) -> list[np.ndarray]:
    """The keys of each push of ``worker``: overlapping between workers, with repeats inside a push."""
    rng = np.random.default_rng(worker)
    return [rng.integers(0, TABLE_SIZE, KEYS_PER_PUSH) for _ in range(PUSHES)]


def push_from_process(address: str, token: str, worker: int, start: Any) -> None:
    """Runs in a spawned process: wait for the others, then push +1 for every key of the sequence."""
    with PSClient(address, token=token) as client:
        client.register("concurrency", worker)
        start.wait(30)
        for index, keys in enumerate(worker_keys(worker)):
            ones = np.ones(len(keys), dtype=np.float32)
            if index % 2:
                client.push_pull("w", keys, ones, keys[:2])
            else:
                client.push("w", keys, ones)
        client.deregister("finished")


@pytest.mark.parametrize("shards", [1, 2])
def test_concurrent_pushes_from_several_processes_lose_no_update(shards, monkeypatch, wait_for):
    monkeypatch.syspath_prepend(str(REPO))  # so the spawned processes can import this module
    context = multiprocessing.get_context("spawn")
    expected = np.zeros(TABLE_SIZE)
    for worker in range(PROCESSES):
        for keys in worker_keys(worker):
            np.add.at(expected, keys, -1.0)
    with start_local_server(token="tok", shards=shards) as server, PSClient(server.address, token="tok") as admin:
        admin.create_table("w", TABLE_SIZE, optimizer="sgd", learning_rate=1.0)
        start = context.Event()
        processes = [context.Process(target=push_from_process, args=(server.address, "tok", worker, start))
                     for worker in range(PROCESSES)]
        for process in processes:
            process.start()
        try:
            wait_for(lambda: admin.status()["registered_workers"] == PROCESSES, "every worker to register")
            start.set()
            for process in processes:
                process.join(45)
                assert process.exitcode == 0
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
        np.testing.assert_array_equal(admin.get_table("w")[:, 0], expected.astype(np.float32))
        status = admin.status()
        assert status["updates"] == PROCESSES * PUSHES
        for document in status["shards"] if shards > 1 else [status]:
            assert document["tables"]["w"]["updates"] == PROCESSES * PUSHES
        assert status["keys_in"] == PROCESSES * PUSHES * KEYS_PER_PUSH
        assert [entry["state"] for entry in status["workers"]] == ["finished"] * PROCESSES
