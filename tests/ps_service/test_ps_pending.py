"""start_pull / start_push_pull: requests in flight while the caller computes, on one
server and on a sharded group, and what the client allows while one is in flight."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ps_service.client import PSClient
from ps_service.errors import PSError

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


def test_the_starting_thread_must_wait_before_its_next_request(address):
    with PSClient(address) as client:
        client.create_table("w", 10, learning_rate=1.0)
        pending = client.start_push_pull("w", [1, 2], [1.0, 1.0], [1, 3])
        with pytest.raises(RuntimeError, match="wait"):
            client.pull("w", [1])
        with pytest.raises(RuntimeError, match="wait"):
            client.start_pull("w", [1])
        np.testing.assert_array_equal(pending.wait()[:, 0], [-1.0, 0.0])
        with pytest.raises(RuntimeError, match="once"):
            pending.wait()
        np.testing.assert_array_equal(client.pull("w", [2])[:, 0], [-1.0])


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
