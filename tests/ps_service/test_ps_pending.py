"""start_pull / start_push_pull: requests in flight while the caller computes, on one
server and on a sharded group, and what the client allows while they are in flight
(one more request behind the first, whose replies are read in order)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ps_service.client import MAX_IN_FLIGHT, PSClient
from ps_service.connection import Connection
from ps_service.errors import PSConnectionError, PSError

pytestmark = pytest.mark.timeout(60)

RUN = "run-1"


@pytest.fixture(params=[1, 2], ids=["1 shard", "2 shards"])
def address(request, group):
    with group(shards=request.param) as address:
        yield address


def test_started_requests_answer_like_the_blocking_ones(address):
    rng = np.random.default_rng(0)
    with PSClient(address) as started, PSClient(address) as blocking:
        for client in (started, blocking):
            client.create_table(f"w{id(client)}", 50, width=2, optimizer="adagrad", learning_rate=0.3)
        keys = [rng.choice(50, 12, replace=False) for _ in range(6)]
        grads = [rng.standard_normal((12, 2)).astype(np.float32) for _ in range(6)]
        pending = started.start_pull(f"w{id(started)}", keys[0])
        expected = blocking.pull(f"w{id(blocking)}", keys[0])
        np.testing.assert_array_equal(pending.wait(), expected)
        for step in range(5):
            pending = started.start_push_pull(f"w{id(started)}", keys[step], grads[step], keys[step + 1])
            expected = blocking.push_pull(f"w{id(blocking)}", keys[step], grads[step], keys[step + 1])
            np.testing.assert_array_equal(pending.wait(), expected)


def test_the_starting_thread_must_wait_before_a_blocking_request_or_a_third(address):
    with PSClient(address) as client:
        client.create_table("w", 10, learning_rate=1.0)
        pending = client.start_push_pull("w", [1, 2], [1.0, 1.0], [1, 3])
        with pytest.raises(RuntimeError, match="wait"):
            client.pull("w", [1])
        behind = client.start_pull("w", [1])
        assert MAX_IN_FLIGHT == 2
        with pytest.raises(RuntimeError, match="wait"):
            client.start_pull("w", [1])
        with pytest.raises(RuntimeError, match="order"):
            behind.wait()
        np.testing.assert_array_equal(pending.wait()[:, 0], [-1.0, 0.0])
        with pytest.raises(RuntimeError, match="once"):
            pending.wait()
        np.testing.assert_array_equal(behind.wait()[:, 0], [-1.0])
        np.testing.assert_array_equal(client.pull("w", [2])[:, 0], [-1.0])


@pytest.mark.parametrize("rows", [3, 100_000], ids=["small", "larger than the receive buffer"])
def test_a_request_sent_behind_another_sees_its_push_and_replies_come_in_order(address, rows):
    """The replies may arrive together (here they have, after the pause); each is read
    whole and the bytes of the next are kept for it."""
    with PSClient(address) as client:
        client.create_table("w", rows, width=2, learning_rate=1.0)
        keys = np.arange(rows)
        first = client.start_push_pull("w", keys, np.ones((rows, 2), np.float32), keys)
        second = client.start_push_pull("w", keys, np.ones((rows, 2), np.float32), keys[::-1])
        time.sleep(0.2)
        np.testing.assert_array_equal(first.wait(), -np.ones((rows, 2)))
        np.testing.assert_array_equal(second.wait(), np.full((rows, 2), -2.0))
        assert client.status()["tables"]["w"]  # a blocking request: the connections are free again
        np.testing.assert_array_equal(client.pull("w", [0])[0], [-2.0, -2.0])


def test_a_fresh_client_sends_a_push_pull_behind_its_first_pull(address):
    """A worker's client never created the table: a group's client learns its shape with the
    first pull, as a push/pull sent behind it cannot ask."""
    with PSClient(address) as admin, PSClient(address) as worker:
        admin.create_table("w", 10, learning_rate=1.0)
        pulled = worker.start_pull("w", [1, 2])
        pushed = worker.start_push_pull("w", [1, 2], [1.0, 2.0], [2, 3])
        np.testing.assert_array_equal(pulled.wait()[:, 0], [0.0, 0.0])
        np.testing.assert_array_equal(pushed.wait()[:, 0], [-2.0, 0.0])
        if "," in address:  # a group checks a push against the table's shape, which it must ask for
            admin.create_table("other", 10, learning_rate=1.0)  # after the worker learnt the shapes
            pulled = worker.start_pull("w", [1])
            with pytest.raises(RuntimeError, match="'other'.*pull from it"):
                worker.start_push_pull("other", [1], [1.0], [1])
            pulled.wait()


def test_a_request_too_large_to_send_behind_another_changes_nothing(address):
    with PSClient(address, max_frame_bytes=4096) as client:
        client.create_table("w", 2000, learning_rate=1.0)
        pending = client.start_push_pull("w", [1], [1.0], [1])
        with pytest.raises(ValueError, match="max_frame_bytes"):
            client.start_pull("w", np.arange(2000))
        np.testing.assert_array_equal(pending.wait()[:, 0], [-1.0])
        np.testing.assert_array_equal(client.pull("w", [1])[:, 0], [-1.0])


def test_a_failed_send_behind_a_request_loses_both_and_frees_the_client(address, monkeypatch):
    """Part of a frame may have gone out: no reply can be matched to its request any more."""
    with PSClient(address) as client:
        client.create_table("w", 10, learning_rate=1.0)
        pending = client.start_pull("w", [1])

        def broken(self, opcode, parts):
            raise PSConnectionError("the connection failed: broken pipe")

        monkeypatch.setattr(Connection, "begin", broken)
        with pytest.raises(PSConnectionError, match="broken pipe"):
            client.start_pull("w", [2])
        monkeypatch.undo()
        with pytest.raises(PSConnectionError, match="lost"):
            pending.wait()
        other: list[BaseException] = []

        def request() -> None:
            try:
                client.pull("w", [1])
            except PSConnectionError as error:
                other.append(error)

        thread = threading.Thread(target=request)
        thread.start()
        thread.join(10)
        assert not thread.is_alive() and "closed" in str(other[0])  # no lock left held


def test_another_threads_request_waits_for_the_reply_in_flight(address):
    with PSClient(address) as client:
        client.create_table("w", 10, learning_rate=1.0)
        pending = client.start_push_pull("w", [4], [2.0], [4])
        seen: list[np.ndarray] = []
        other = threading.Thread(target=lambda: seen.append(client.pull("w", [4])))
        other.start()
        other.join(0.3)
        assert other.is_alive() and not seen  # it waits for the connection, not inside our request
        np.testing.assert_array_equal(pending.wait()[:, 0], [-2.0])
        other.join(10)
        np.testing.assert_array_equal(seen[0][:, 0], [-2.0])


def test_a_heartbeat_skips_a_busy_connection_and_beats_an_idle_one(address):
    with PSClient(address) as worker, PSClient(address) as admin:
        admin.create_table("w", 10)
        worker.register(RUN, "w-0", 0)
        pending = worker.start_pull("w", [1])
        beat = threading.Thread(target=worker.heartbeat)
        beat.start()
        beat.join(10)
        assert not beat.is_alive()  # returned at once: the request in flight shows the worker is alive
        pending.wait()
        worker.heartbeat()
        unregistered = PSClient(address)
        with unregistered, pytest.raises(PSError, match="regist"):
            unregistered.heartbeat()  # an idle connection is really asked


def test_a_refused_started_request_raises_by_its_wait_and_the_client_goes_on(address):
    with PSClient(address) as client:
        client.create_table("w", 10, learning_rate=1.0)
        with pytest.raises(PSError, match="99"):  # a group's client refuses it before sending
            client.start_push_pull("w", [1], [1.0], [99]).wait()
        np.testing.assert_array_equal(client.pull("w", [1])[:, 0], [0.0])  # nothing was applied
