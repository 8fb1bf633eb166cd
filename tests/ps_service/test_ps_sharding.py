"""A sharded group answers exactly like one server: in-thread groups against a single
server, and groups started as processes (``start_local_server(shards=)``, ``--shards``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ps_service.client import PSClient
from ps_service.errors import PSConnectionError, PSError
from ps_service.launcher import start_local_server
from ps_service.server import ParameterServer

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]

# name, size, width, create_table options: every optimizer, both initialisers, widths 1
# and 3, sizes that are not multiples of 2 or 3 (and one that is), a step schedule for adam.
TABLES: list[tuple[str, int, int, dict[str, Any]]] = [
    ("adam", 11, 3, {"optimizer": "adam", "learning_rate": 0.05, "schedule": "step", "decay_steps": 3,
                     "decay_rate": 0.5, "initializer": "normal", "init_scale": 0.1, "seed": 7}),
    ("sgd", 12, 1, {"optimizer": "sgd", "learning_rate": 0.5, "l2": 0.01}),
    ("adagrad", 13, 1, {"optimizer": "adagrad", "learning_rate": 0.2, "initializer": "normal", "seed": 3}),
    ("nesterov", 7, 3, {"optimizer": "nesterov", "momentum": 0.8, "schedule": "inverse_sqrt",
                        "decay_steps": 2}),
    ("momentum", 5, 2, {"optimizer": "momentum", "learning_rate": 0.3, "initializer": "normal",
                        "init_scale": 1.0, "seed": 1}),
]


def shard_documents(status: dict[str, Any]) -> list[dict[str, Any]]:
    return status["shards"] if isinstance(status["shards"], list) else [status]


def run_sequence(client: PSClient, seed: int = 0) -> list[Any]:
    """Create every table and drive it with pushes (duplicate keys), push_pulls, pulls,
    get_table and set_table; returns everything the server answered, in order."""
    rng = np.random.default_rng(seed)
    answers: list[Any] = []
    for name, size, width, options in TABLES:
        answers.append(client.create_table(name, size, width, **options)["spec"]["size"])
    for step in range(10):
        for name, size, width, _options in TABLES:
            keys = rng.integers(0, size, 6).astype(np.int64 if step % 2 else np.int32)
            keys[:2] = keys[2]  # always duplicates
            grads = rng.standard_normal((len(keys), width)).astype(np.float32)
            if step % 3 == 0:
                client.push(name, keys, grads)
            else:
                wanted = rng.integers(0, size, 5)
                wanted[0] = wanted[1]
                answers.append(client.push_pull(name, keys, grads, wanted))
            answers.append(client.pull(name, rng.permutation(size)[: 1 + step % size]))
            if step == 4:
                client.set_table(name, rng.standard_normal((size, width)).astype(np.float32))
            if step % 4 == 3:
                answers.append(client.get_table(name))
    answers.append(client.pull("adam", []))
    answers.extend(client.get_table(name) for name, *_ in TABLES)
    answers.append({name: table["updates"] for name, table in client.status()["tables"].items()})
    return answers


def assert_same_answers(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for index, (mine, theirs) in enumerate(zip(got, expected)):
        if isinstance(theirs, np.ndarray):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, f"answer {index}"
            np.testing.assert_array_equal(mine, theirs, err_msg=f"answer {index}")
        else:
            assert mine == theirs, f"answer {index}"


@pytest.fixture(scope="module")
def single_server_answers() -> tuple[list[Any], dict[str, Any]]:
    with ParameterServer() as server, PSClient(server.address) as client:
        return run_sequence(client), client.status()


@pytest.mark.parametrize("shards", [2, 3])
def test_group_answers_exactly_like_a_single_server(shards, single_server_answers, group):
    expected, single_status = single_server_answers
    with group(shards) as address, PSClient(address) as client:
        assert client.shards == shards
        assert_same_answers(run_sequence(client), expected)
        status = client.status()
    documents = shard_documents(status)
    assert [document["shard"] for document in documents] == list(range(shards))
    # every shard counts every push, so schedules and Adam's bias correction stay in step
    for document in documents:
        assert document["shards"] == shards
        assert {name: table["updates"] for name, table in document["tables"].items()} == expected[-1]
    assert status["updates"] == single_status["updates"]
    # traffic is summed over the shards: each key travels to exactly one shard
    for field in ("keys_in", "keys_out"):
        assert status[field] == single_status[field] == sum(document[field] for document in documents)
    for field in ("requests", "bytes_in", "bytes_out", "clients"):
        assert status[field] == sum(document[field] for document in documents)
    assert status["clients"] == shards
    assert status["address"] == address


def local_rows_of(get_table: np.ndarray, shard: int, shards: int) -> np.ndarray:
    return get_table[shard::shards]


@pytest.mark.parametrize("shards", [2, 3])
def test_each_shard_holds_the_keys_congruent_to_its_index(shards, group):
    with group(shards) as address, PSClient(address) as client:
        client.create_table("w", 10, width=2, learning_rate=1.0)
        keys = np.arange(10)
        client.push("w", keys, -np.stack([keys, keys], axis=1).astype(np.float32))
        whole = client.get_table("w")
        np.testing.assert_array_equal(whole[:, 0], keys)
        for shard, member_address in enumerate(address.split(",")):
            with PSClient(member_address, member=True) as member:
                # a member's own table, read through a one-address client, is its local rows
                np.testing.assert_array_equal(member.get_table("w"), local_rows_of(whole, shard, shards))


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("operation", ["push", "push_pull next key", "pull"])
@pytest.mark.parametrize("bad_key", [-1, "size", "size+4", 2**40])
@pytest.mark.parametrize("caller", ["creator", "worker"])
def test_out_of_range_key_names_the_global_key_and_changes_no_shard(shards, operation, bad_key, caller, group):
    """``worker`` is a client that never created the table, as a Lambda worker is."""
    size = 11
    key = {"size": size, "size+4": size + 4}.get(bad_key, bad_key)
    with group(shards) as address, PSClient(address) as client:
        client.create_table("w", size, width=2, optimizer="adam", initializer="normal", seed=4)
        client.push("w", [0, 1, 2], np.ones((3, 2), dtype=np.float32))
        before, updates_before = client.get_table("w"), client.status()["updates"]
        grads = np.ones((4, 2), dtype=np.float32)
        with PSClient(address) as worker:
            caller_client = client if caller == "creator" else worker
            with pytest.raises(PSError, match=rf"table 'w' has {size} keys \(0..{size - 1}\); "
                                              rf"key {key} is out of range"):
                if operation == "push":
                    caller_client.push("w", [0, 1, key, 3], grads)
                elif operation == "pull":
                    caller_client.pull("w", [3, key])
                else:
                    caller_client.push_pull("w", [0, 1, 2, 3], grads, [4, key])
            # nothing was applied anywhere: the group stays a single server's equal
            np.testing.assert_array_equal(client.get_table("w"), before)
            updates = [document["updates"] for document in shard_documents(client.status())]
            assert updates == [updates_before] * shards
            caller_client.push("w", [5], np.ones((1, 2), dtype=np.float32))
            updates = [document["updates"] for document in shard_documents(client.status())]
            assert updates == [updates_before + 1] * shards


REFUSED: dict[str, Any] = {
    "nan gradient": lambda c: c.push("w", [0, 1, 4], [[1, 1], [1, 1], [np.nan, 1]]),
    "inf in push_pull": lambda c: c.push_pull("w", [3, 5], [[1, 1], [np.inf, 1]], [0, 1]),
    "wrong width": lambda c: c.push("w", [0, 1, 2], np.ones((3, 3))),
    "width 1 for width 2": lambda c: c.push_pull("w", [0, 1], [1.0, 1.0], [2]),
    "set_table short": lambda c: c.set_table("w", np.ones((8, 2))),
    "set_table long": lambda c: c.set_table("w", np.ones((10, 2))),
    "set_table wide": lambda c: c.set_table("w", np.ones((9, 3))),
    "set_table nan": lambda c: c.set_table("w", np.where(np.arange(18).reshape(9, 2) == 13, np.nan, 1.0)),
}


def refusal(address: str, request: Any) -> tuple[str, np.ndarray, list[int]]:
    """The message a refused request gets, and the table and step counts after it."""
    with PSClient(address) as client:
        client.create_table("w", 9, width=2, optimizer="momentum", initializer="normal", seed=2)
        client.push("w", [0, 1, 2], np.ones((3, 2)))
        with PSClient(address) as worker, pytest.raises(PSError) as refused:
            request(worker)
        return (str(refused.value), client.get_table("w"),
                [document["updates"] for document in shard_documents(client.status())])


@pytest.mark.parametrize("shards", [2, 3])
@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_a_request_one_shard_would_refuse_is_refused_whole_with_the_single_servers_message(shards, case, group):
    with ParameterServer() as single:
        message, table, updates = refusal(single.address, REFUSED[case])
    assert "nothing was applied" in message or "set_table sent" in message
    with group(shards) as address:
        group_message, group_table, group_updates = refusal(address, REFUSED[case])
    assert group_message == message
    np.testing.assert_array_equal(group_table, table)
    assert group_updates == [1] * shards


@pytest.mark.parametrize("member", [0, -1])
def test_a_one_address_client_of_a_group_member_is_refused_clearly(member, group):
    with group(3) as address:
        addresses = address.split(",")
        index = member % 3
        with pytest.raises(PSConnectionError, match=rf"is shard {index} of 3, but it is listed at position 0 of 1 "
                                                    r"addresses; connect with every address of the group"):
            PSClient(addresses[member])
        with pytest.raises(PSConnectionError, match="is shard 2 of 3, but it is listed at position 0 of 3"):
            PSClient(",".join(reversed(addresses)))
        # An operator may look at one member on its own; the member still refuses tables of another layout.
        with PSClient(addresses[member], member=True) as client:
            with pytest.raises(PSError, match=rf"this server is shard {index} of 3, but the client addressed "
                                              r"it as shard 0 of 1 when creating table 'w'.*every address"):
                client.create_table("w", 10)
        with PSClient(address) as whole:
            assert whole.create_table("w", 10)["created"]


def test_group_clients_see_the_same_table_however_often_it_is_created(group):
    with group(2) as address, PSClient(address) as first, PSClient(address) as second:
        assert first.create_table("w", 5, optimizer="adagrad")["created"]
        assert not second.create_table("w", 5, optimizer="adagrad")["created"]
        with pytest.raises(PSError, match="already exists with a different spec"):
            second.create_table("w", 6, optimizer="adagrad")
        first.push("w", [4, 3], [1.0, 2.0])
        np.testing.assert_array_equal(second.pull("w", [3, 4]), first.pull("w", [3, 4]))


def test_local_server_group_serves_end_to_end(single_server_answers, running):
    expected, _single_status = single_server_answers
    with start_local_server(shards=2, token="group-token") as server:
        assert len(server.pids) == 2 and len(set(server.pids)) == 2
        addresses = server.address.split(",")
        assert len(addresses) == 2 and len(set(addresses)) == 2
        with PSClient(server.address, token="group-token") as client:
            assert_same_answers(run_sequence(client), expected)
            assert [document["shard"] for document in client.status()["shards"]] == [0, 1]
    assert not server.running
    for pid in server.pids:
        assert not running(pid)


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_module_with_shards_prints_one_group_address_and_stops_every_shard_on_sigterm(read_line, running,
                                                                                     wait_until_gone):
    process = subprocess.Popen([sys.executable, "-m", "ps_service", "--shards", "2", "--port", "0"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    shard_pids: list[int] = []
    try:
        line = read_line(process, timeout_s=30.0)
        assert line.startswith("listening on ")
        address = line.removeprefix("listening on ").strip()
        assert len(address.split(",")) == 2
        shard_pids = children(process.pid)
        assert len(shard_pids) == 2
        with PSClient(address) as client:
            assert client.shards == 2
            client.create_table("w", 5, learning_rate=1.0)
            client.push("w", [0, 1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0, 5.0])
            np.testing.assert_array_equal(client.get_table("w")[:, 0], [-1, -2, -3, -4, -5])
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert process.stdout.read() == "", "the group printed more than its one listening line"
        for pid in shard_pids:
            assert wait_until_gone(pid), f"shard process {pid} outlived its group"
    finally:
        process.kill()
        process.wait()
        for pid in shard_pids:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_push_too_large_for_one_shards_frame_reaches_no_shard(group):
    with group(2) as address, PSClient(address, max_frame_bytes=4096) as client:
        client.create_table("w", 10_000, optimizer="sgd", learning_rate=1.0)
        odd = np.arange(1, 2001, 2)  # every key on shard 1: its frame is too big, shard 0's is empty
        with pytest.raises(ValueError, match="exceeds this client's max_frame_bytes"):
            client.push("w", odd, np.ones(len(odd), dtype=np.float32))
        assert [document["tables"]["w"]["updates"] for document in client.status()["shards"]] == [0, 0]
        assert not client.pull("w", odd[:100]).any()
