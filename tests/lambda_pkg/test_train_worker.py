"""The worker loop against a real parameter server, with handovers forced by a short
Lambda time limit."""

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

from cirrus_airflow.models.logistic import Minibatch
from cirrus_airflow.shards import SparseRows, write_shard
from cirrus_airflow.storage import Storage
from lambda_pkg.data_iterator import READ_AHEAD, READ_AHEAD_NICENESS, Position, UnitReader, minibatches
from lambda_pkg import train_worker
from lambda_pkg.train_worker import _cache_budget, _Journal, _Loop, _resident_bytes, worker_task
from ps_service.client import PSClient
from ps_service.server import ParameterServer

DIM = 100


def _shards(tmp_path, n_shards=3, rows=500):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=DIM)
    units = []
    for s in range(n_shards):
        lengths = np.full(rows, 5)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = rng.integers(0, DIM, indptr[-1]).astype(np.int32)
        values = np.ones(indptr[-1], np.float32)
        margins = np.add.reduceat(truth[indices], indptr[:-1])
        labels = (rng.random(rows) < 1 / (1 + np.exp(-margins))).astype(np.float32)
        uri = str(tmp_path / f"part-{s:05d}.parquet")
        entry = write_shard(Storage(), uri, SparseRows(labels, indptr, indices, values), row_group_rows=100)
        units += [[uri, g] for g in range(entry["row_groups"])]
    return units


class _Clock:
    """A Lambda context whose remaining time runs out after a given number of calls."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def get_remaining_time_in_millis(self) -> int:
        self.calls -= 1
        return 60_000 if self.calls > 0 else 0


@pytest.fixture
def server():
    with ParameterServer(token="t0ken") as ps:
        yield ps


def _event(server, units, **kw):
    return {"task": "train.worker", "model": "lr", "table": "w", "ps": {"address": server.address, "token": "t0ken"},
            "model_params": {"bias_key": DIM}, "minibatch": 20, "epochs": 2, "seed": 1, "worker_id": 0, "units": units,
            "report_interval_s": 0.05, "handover_margin_ms": 1000, **kw}


def test_no_fresh_invocation_is_asked_for_when_the_work_is_done(tmp_path, server):
    units = _shards(tmp_path, n_shards=1, rows=100)
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w", size=DIM + 1, optimizer="sgd", learning_rate=0.5)
    # The time limit is near at every step, but the last step ends the work: "done".
    result = worker_task(_event(server, units, epochs=1, minibatch=100), _Clock(calls=0))
    assert result["status"] == "done" and result["resume"] is None and result["examples"] == 100


def test_handover_resumes_where_the_last_invocation_stopped(tmp_path, server):
    units = _shards(tmp_path)
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w", size=DIM + 1, optimizer="sgd", learning_rate=0.5)
    results, resume, generation = [], None, 0
    while True:
        result = worker_task(_event(server, units, resume=resume, generation=generation), _Clock(calls=17))
        results.append(result)
        if result["status"] != "handover":
            break
        resume, generation = result["resume"], generation + 1
    assert len(results) > 3 and results[-1]["status"] == "done"
    # Every example of both epochs was trained on exactly once, across all the invocations.
    assert sum(r["examples"] for r in results) == 2 * 3 * 500
    assert sum(r["updates"] for r in results) == 2 * 3 * 5 * 5
    with PSClient(server.address, token="t0ken") as client:
        status = client.status()
        assert status["tables"]["w"]["updates"] == 150
        assert any(r["name"] == "train_loss" for r in status["tables"]["w"]["reports"])
    losses = [r["train_loss"] for r in results]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])


def test_stop_flag_and_deadline_end_the_worker(tmp_path, server):
    units = _shards(tmp_path, n_shards=1)
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w", size=DIM + 1, optimizer="adagrad", learning_rate=0.1)
        client.stop("w")
    result = worker_task(_event(server, units), None)
    assert result["status"] == "stopped" and result["updates"] == 0  # nothing pushed to a stopped table
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w2", size=DIM + 1, optimizer="sgd", learning_rate=0.1)
    result = worker_task(_event(server, units, table="w2", deadline=time.time() - 1), None)
    assert result["status"] == "deadline" and result["updates"] == 1


def test_positions_cover_every_minibatch_once_from_any_start(tmp_path):
    units = _shards(tmp_path, n_shards=2, rows=250)
    run = lambda start: [(p, len(rows)) for p, rows in minibatches(  # noqa: E731
        [tuple(u) for u in units], reader=UnitReader(Storage()), minibatch=40, epochs=2, seed=3, worker=1,
        start=start)]
    full = run(Position())
    assert sum(n for _, n in full) == 2 * 500
    # Resuming from the position after any batch gives exactly the rest.
    for cut in (1, 7, len(full) // 2, len(full) - 1):
        assert run(full[cut - 1][0]) == full[cut:]


class _CountingReader(UnitReader):
    """Records the row groups it reads from storage (not those it had kept)."""

    def __init__(self, cache_bytes: int) -> None:
        super().__init__(Storage(), cache_bytes=cache_bytes)
        self.reads = []

    def _read(self, unit):
        self.reads.append(unit)
        return super()._read(unit)


def _epochs_of(reader, units, epochs=3):
    return [rows for _, rows in minibatches(units, reader=reader, minibatch=40, epochs=epochs, seed=3, worker=1,
                                            start=Position())]


@pytest.mark.parametrize("kept_units", [0, 2, 6])
def test_decoded_row_groups_are_kept_up_to_the_budget_and_read_once(tmp_path, kept_units):
    units = [tuple(u) for u in _shards(tmp_path, n_shards=2, rows=250)]  # 6 row groups of 100 or 50 rows
    unit_bytes = UnitReader(Storage()).read(units[0]).nbytes  # the largest: 100 rows
    reader = _CountingReader(cache_bytes=kept_units * unit_bytes)
    batches = _epochs_of(reader, units)
    assert 0 < reader.kept_bytes <= reader.cache_bytes if kept_units else reader.kept_bytes == 0
    # The first epoch reads every row group; the later two only those not kept.
    kept = len(units) - sum(1 for unit in units if reader.reads.count(unit) == 3)
    assert kept >= kept_units and len(reader.reads) == len(units) + 2 * (len(units) - kept)
    plain = _epochs_of(UnitReader(Storage()), units)
    assert len(batches) == len(plain)
    for kept, read in zip(batches, plain):
        for name in ("labels", "indptr", "indices", "values"):
            np.testing.assert_array_equal(getattr(kept, name), getattr(read, name))


def test_kept_row_groups_own_their_memory(tmp_path):
    """The budget counts the arrays' bytes; a view would pin a larger buffer of Arrow's."""
    units = [tuple(u) for u in _shards(tmp_path, n_shards=1, rows=100)]
    reader = UnitReader(Storage(), cache_bytes=1 << 20)
    rows = reader.read(units[0])
    assert reader.read(units[0]) is rows and reader.requests == 2
    assert all(getattr(rows, name).flags.owndata for name in ("labels", "indptr", "indices", "values"))
    assert reader.kept_bytes == rows.nbytes
    reader.close()
    assert reader.kept_bytes == 0
    with pytest.raises(ValueError, match="cache_bytes must be at least 0"):
        UnitReader(Storage(), cache_bytes=-1)


class _Sized(_Clock):
    """A Lambda context with a memory size and time to spare."""

    def __init__(self, memory_limit_in_mb: str) -> None:
        super().__init__(calls=10**9)
        self.memory_limit_in_mb = memory_limit_in_mb  # a string, as Lambda's context gives it


def test_a_worker_reads_its_share_once_when_its_memory_holds_it(tmp_path, server):
    units = _shards(tmp_path, n_shards=2, rows=250)
    with PSClient(server.address, token="t0ken") as client:
        for table in ("w", "w2"):
            client.create_table(table, size=DIM + 1, optimizer="sgd", learning_rate=0.5)
    room_mb = 64  # beside the test process's own memory: the budget is half of it
    sized = worker_task(_event(server, units, epochs=3), _Sized(str((_resident_bytes() >> 20) + room_mb)))
    unsized = worker_task(_event(server, units, table="w2", epochs=3), _Clock(calls=10**9))
    assert sized["examples"] == unsized["examples"] == 3 * 500
    # Each row group once, and the shards' footers (each read-ahead thread opens those it reads).
    assert len(units) + 2 <= sized["storage_requests"]["get"] <= len(units) + 2 * READ_AHEAD
    assert unsized["storage_requests"]["get"] > 3 * len(units)


def test_the_cache_budget_is_half_of_what_the_runtime_leaves():
    resident_mb = _resident_bytes() / 2**20
    assert _cache_budget(_Sized(str(int(resident_mb) + 101))) / 2**20 == pytest.approx(50, abs=1)
    assert _cache_budget(_Sized(str(int(resident_mb) // 2))) == 0  # the runtime alone fills it
    assert _cache_budget(None) == 0


class _GatedReader:
    """A UnitReader whose first ``gate`` reads only proceed together: were the reads one at
    a time, the first would wait at the barrier until it broke."""

    def __init__(self, gate: int) -> None:
        self.real, self.calls = UnitReader(Storage()), 0
        self.barrier = threading.Barrier(gate, timeout=10)
        self.lock = threading.Lock()

    def read(self, unit):
        with self.lock:
            self.calls += 1
            gated = self.calls <= self.barrier.parties
        if gated:
            self.barrier.wait()
        return self.real.read(unit)


def test_row_groups_are_read_several_at_once_and_ahead_across_epochs(tmp_path):
    units = [tuple(u) for u in _shards(tmp_path, n_shards=2, rows=250)]  # 6 row groups
    reader = _GatedReader(READ_AHEAD)
    batches = minibatches(units, reader=reader, minibatch=40, epochs=2, seed=3, worker=1, start=Position())
    for following, _rows in batches:
        if following == Position(1, 0, 0):  # the last minibatch of the first epoch
            give_up = time.monotonic() + 10
            while reader.calls <= len(units) and time.monotonic() < give_up:
                time.sleep(0.01)
            assert reader.calls > len(units)  # the next epoch's first row groups are on their way
    batches.close()
    reader.real.close()
    assert reader.calls == 2 * len(units)


class _PriorityReader:
    """Records the scheduling priority of each thread that reads."""

    def __init__(self) -> None:
        self.real, self.niceness = UnitReader(Storage()), []

    def read(self, unit):
        self.niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.real.read(unit)


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux schedules each thread at its own priority")
def test_reads_run_below_the_training_threads_priority(tmp_path):
    units = [tuple(u) for u in _shards(tmp_path, n_shards=2, rows=250)]
    reader = _PriorityReader()
    for _ in minibatches(units, reader=reader, minibatch=40, epochs=1, seed=3, worker=1, start=Position()):
        pass
    reader.real.close()
    training = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert reader.niceness == [min(19, training + READ_AHEAD_NICENESS)] * len(units)


def test_nothing_is_in_flight_while_the_worker_may_wait_on_storage(tmp_path, server):
    """A read that starts a row group may wait on storage (seconds, on a bad day); the reply in
    flight is collected first, so the heartbeat thread, which skips a busy connection, beats."""
    units = [tuple(u) for u in _shards(tmp_path, n_shards=1, rows=300)]  # 3 row groups of 100 rows
    with PSClient(server.address, token="t0ken") as ps:
        ps.create_table("w", size=DIM + 1, optimizer="sgd", learning_rate=0.1)
        idle_at_boundaries = []

        def watched():
            crossing = True
            for following, rows in minibatches(units, reader=UnitReader(Storage()), minibatch=20, epochs=2,
                                               seed=1, worker=0, start=Position()):
                if crossing:  # this item came from a new row group: the iterator may have waited for it
                    idle_at_boundaries.append(not ps._in_flight)
                crossing = following.batch == 0
                yield following, rows

        loop = _Loop(ps, "w", lambda rows: Minibatch.of(rows, DIM), _Journal(Storage(), None, 0, 0, every_s=5),
                     0, report_interval_s=0.05)
        assert loop.run(watched(), lambda: None, Position()) == ("done", None)
    assert len(idle_at_boundaries) == 6 and all(idle_at_boundaries), idle_at_boundaries
    assert loop.stats["examples"] == 2 * 300


def test_sending_before_reading_leaves_the_weights_no_staler(tmp_path, server, monkeypatch):
    """The server answers in order, so each step's pull still follows the step before's push:
    with SGD the model comes out the same to the bit whether a step sends its push/pull before
    it reads the reply in flight or after (as it does when that reply is too large to wait)."""
    units = [tuple(u) for u in _shards(tmp_path, n_shards=1, rows=300)]  # 30 steps over 2 epochs
    modes = ("send first", "read first", "reply too large")
    tables, behind = {}, dict.fromkeys(modes, 0)
    for mode in modes:
        with PSClient(server.address, token="t0ken") as ps, monkeypatch.context() as patch:
            table = f"w{modes.index(mode)}"
            ps.create_table(table, size=DIM + 1, optimizer="sgd", learning_rate=0.5)

            def counting(*args, _send=ps.start_push_pull, _ps=ps, _mode=mode):
                behind[_mode] += bool(_ps._in_flight)
                return _send(*args)

            patch.setattr(ps, "start_push_pull", counting)
            loop = _Loop(ps, table, lambda rows: Minibatch.of(rows, DIM), _Journal(Storage(), None, 0, 0, every_s=5),
                         0, report_interval_s=3600)
            if mode == "read first":
                patch.setattr(loop, "_quiet", lambda: False)
            if mode == "reply too large":
                patch.setattr(train_worker, "SEND_BEHIND_MAX_REPLY_BYTES", 4)  # one weight: every reply is larger
            batches = minibatches(units, reader=UnitReader(Storage()), minibatch=20, epochs=2, seed=1, worker=0,
                                  start=Position())
            assert loop.run(batches, lambda: None, Position()) == ("done", None)
            tables[mode] = ps.get_table(table)
    for mode in modes[1:]:
        np.testing.assert_array_equal(tables[modes[0]], tables[mode])
    # Sent behind a request: every step but the last and those whose next read starts a row group.
    assert behind == {"send first": 30 - 1 - 6, "read first": 0, "reply too large": 0}


@pytest.mark.parametrize("interval_s, reports", [(0.0, 30), (3600.0, 1)])
def test_training_loss_is_reported_per_interval_and_at_the_end(tmp_path, server, interval_s, reports):
    """Reports go out by time, not by step count; the last one carries whatever the window
    holds, so together they account for every example once."""
    units = [tuple(u) for u in _shards(tmp_path, n_shards=1, rows=300)]
    with PSClient(server.address, token="t0ken") as ps:
        ps.create_table("w", size=DIM + 1, optimizer="sgd", learning_rate=0.1)
        batches = minibatches(units, reader=UnitReader(Storage()), minibatch=20, epochs=2, seed=1, worker=0,
                              start=Position())
        loop = _Loop(ps, "w", lambda rows: Minibatch.of(rows, DIM), _Journal(Storage(), None, 0, 0, every_s=5),
                     0, report_interval_s=interval_s)
        assert loop.run(batches, lambda: None, Position()) == ("done", None)
        sent = [r for r in ps.status()["tables"]["w"]["reports"] if r["name"] == "train_loss"]
    assert loop.stats["updates"] == 30 and len(sent) == reports
    assert sum(r["count"] for r in sent) == loop.stats["examples"] == 2 * 300


def test_a_duplicated_invocation_is_refused_and_does_no_work(tmp_path, server):
    units = _shards(tmp_path, n_shards=1, rows=100)
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w", size=DIM + 1, optimizer="sgd", learning_rate=0.5)
        first = worker_task(_event(server, units, epochs=1), None)
        weights = client.get_table("w")
        # Lambda delivers the same event again after the first finished: nothing is pushed twice.
        again = worker_task(_event(server, units, epochs=1), None)
        assert first["status"] == "done" and first["updates"] == 5
        assert again["status"] == "rejected" and again["updates"] == 0
        assert "already finished" in again["reason"]
        np.testing.assert_array_equal(client.get_table("w"), weights)
        assert client.status()["tables"]["w"]["updates"] == 5
        # A worker that handed over leaves its slot to the next generation only.
        handed = worker_task(_event(server, units, worker_id=1, epochs=2), _Clock(calls=3))
        assert handed["status"] == "handover"
        assert worker_task(_event(server, units, worker_id=1, epochs=2, resume=handed["resume"]),
                           None)["status"] == "rejected"
        assert worker_task(_event(server, units, worker_id=1, epochs=2, resume=handed["resume"], generation=1),
                           None)["status"] == "done"


def test_a_stopped_worker_resumes_at_the_step_it_dropped(tmp_path, server):
    """The server's stop drops the step in hand: the position returned (and journaled) is
    the one after the last step trained, so a resumed run trains that step, none is lost."""
    units = _shards(tmp_path, n_shards=1, rows=200)
    with PSClient(server.address, token="t0ken") as client:
        client.create_table("w3", size=DIM + 1, optimizer="sgd", learning_rate=0.1)
        client.stop("w3")
    journal = tmp_path / "journal.json"
    result = worker_task(_event(server, units, table="w3", epochs=1, progress_uri=str(journal)), None)
    assert result["status"] == "stopped" and result["examples"] <= 20
    saved = json.loads(journal.read_text())
    assert saved["examples"] == result["examples"]
    assert saved["position"] == {"epoch": 0, "unit": 0, "batch": result["updates"]}
