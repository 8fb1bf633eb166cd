"""The training worker: asynchronous minibatch SGD against the parameter server.

One invocation trains until its work is done, the run's deadline passes, the server
says stop, or its own Lambda time limit comes near. In the last case it returns
its position, and the driver starts a fresh invocation (the next generation) that
resumes there: Lambda's 15-minute limit never cuts a worker off mid-step.

The loop is pipelined, one round trip per minibatch: the gradient of minibatch t and
the pull of minibatch t+2's weights travel together (``push_pull``) while the worker
computes minibatch t+1's gradient with the weights pulled one round trip earlier. The
network is hidden behind the arithmetic; the price is that a worker's weights miss its
own last update (one step more of the staleness that asynchronous SGD tolerates
anyway). Each push/pull is sent before the reply to the one before it is read: the
server answers in order, so the weights are no staler, and a reply that comes late
(one in ten, by up to a millisecond, on a busy machine) finds the next request already
at the server instead of holding up the worker's send.

Before any work the invocation registers ``(run, worker, generation)`` with the server.
Lambda may deliver an invocation twice (a retried invoke, an at-least-once async
event); the server refuses the second registration of a live or finished generation,
and this invocation then returns ``rejected`` without touching the model.

Every few seconds the invocation writes where it is (``progress_uri``): if it crashes
or goes silent, the driver starts the next generation from there rather than from
where this one started.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cirrus_airflow.models import registry
from cirrus_airflow.storage import Storage
from lambda_pkg.data_iterator import Position, UnitReader, minibatches
from ps_service.client import SEND_BEHIND_MAX_REPLY_BYTES, PendingReply, PSClient
from ps_service.errors import PSAuthError, PSConnectionError, PSError

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # well inside the server's default 30 s heartbeat timeout
PROGRESS_S = 5.0
# Training-loss reports: a round trip each, on the loop's critical path, and the server keeps
# the last 1,000 of them. Per time, not per step, so their cost and the span the server keeps
# do not depend on how fast steps are (every 20 steps was 50 reports a second a worker).
REPORT_S = 0.5
# The share of the function's memory left beside the runtime that may hold decoded row groups
# for the epochs after the first (``UnitReader``); the rest is the read-ahead's and the step's.
DECODED_CACHE_SHARE = 0.5


def worker_task(event: dict, context: Any) -> dict:
    model = event.get("model")
    registry.check_model(model)
    params = event["model_params"]
    units = [(uri, int(group)) for uri, group in event["units"]]
    if not units:
        raise ValueError("train.worker got no work units; the driver must give each worker at least one")
    table = event["table"]
    margin_ms = int(event["handover_margin_ms"])
    deadline = event.get("deadline")
    worker = int(event["worker_id"])
    generation = int(event.get("generation", 0))
    start = Position.from_json(event.get("resume"))

    storage = Storage()
    journal = _Journal(storage, event.get("progress_uri"), worker, generation,
                       every_s=float(event.get("progress_interval_s", PROGRESS_S)))
    reader = UnitReader(storage, cache_bytes=_cache_budget(context))
    batches = minibatches(
        units, reader=reader, minibatch=int(event["minibatch"]), epochs=int(event["epochs"]),
        seed=int(event.get("seed", 0)), worker=worker, start=start,
    )
    with PSClient(event["ps"]["address"], token=event["ps"].get("token")) as ps:
        try:
            ps.register(table, worker, generation)
        except (PSConnectionError, PSAuthError):
            raise
        except PSError as refusal:
            batches.close()
            return {"worker_id": worker, "generation": generation, "status": "rejected", "reason": str(refusal),
                    "resume": None, "examples": 0, "updates": 0, "train_loss": 0.0, "loop_seconds": 0.0,
                    "storage_requests": {"get": 0, "put": 0}}
        loop = _Loop(ps, table, lambda rows: registry.minibatch(model, params, rows), journal, worker,
                     report_interval_s=float(event.get("report_interval_s", REPORT_S)))
        with _heartbeats(ps, float(event.get("heartbeat_s", HEARTBEAT_S))), contextlib.closing(reader), \
                contextlib.closing(batches):
            looped = time.perf_counter()
            status, position = loop.run(batches, lambda: _stop_reason(ps, context, deadline, margin_ms), start)
            loop_seconds = time.perf_counter() - looped
        ps.deregister("handover" if status == "handover" else "finished")
    journal.note(position, loop.stats, final=True)
    stats = loop.stats
    return {
        "worker_id": worker,
        "generation": generation,
        "status": status,
        "resume": position.to_json() if status == "handover" and position else None,
        "examples": stats["examples"],
        "updates": stats["updates"],
        "train_loss": stats["loss_sum"] / max(1, stats["examples"]),
        # In the training loop only (no start-up, registration or hand-over): the worker's steady rate.
        "loop_seconds": loop_seconds,
        "storage_requests": {"get": reader.requests, "put": journal.writes},
    }


@dataclass
class _Step:
    """A minibatch on its way through the pipeline, with the position that follows it."""

    following: Position
    batch: Any  # registry.minibatch(...): keys, gradient(weights), len
    weights: np.ndarray | None = None  # its keys' weights, once pulled


class _Loop:
    """The pipelined training loop of one invocation (see the module docstring).

    The request in flight is sent with ``start_push_pull`` and read after the next
    gradient: the kernel and the server carry it meanwhile, so no thread of this
    process shares the interpreter with the arithmetic. Steps that need the connection
    free (a loss report, a journal entry, a read that may wait on storage, the last
    step) read the reply before sending, as do steps whose reply in flight is too large
    to wait unread while the next request is sent; the others send first.
    """

    def __init__(self, ps: PSClient, table: str, make_batch: Any, journal: _Journal, worker: int, *,
                 report_interval_s: float) -> None:
        self.ps, self.table, self.make_batch, self.journal, self.worker = ps, table, make_batch, journal, worker
        self.report_interval_s = report_interval_s
        self.next_report_at = time.monotonic() + report_interval_s
        self.stats = {"examples": 0, "updates": 0, "loss_sum": 0.0}
        self.window = {"examples": 0, "loss_sum": 0.0}

    def run(self, batches: Iterator, stop_reason: Any, start: Position) -> tuple[str, Position | None]:
        """Train until the work is done or ``stop_reason()`` says why not; returns the status
        and the position to resume from (None: all done): after the last step trained."""
        trained = start
        current = self._step(next(batches, None))
        if current is None:
            return "done", None
        current.weights = self.ps.pull(self.table, current.batch.keys)
        ahead = self._step(next(batches, None))
        in_flight = None if ahead is None else self.ps.start_pull(self.table, ahead.batch.keys)
        behind = None  # a request sent behind in_flight, before in_flight's reply was read
        try:
            while True:
                # While ahead's weights (and the previous push) travel: this step's gradient, and the
                # step after next read. A read that starts a new row group may wait on storage, so the
                # reply is collected first: nothing is in flight while the worker waits, and the
                # heartbeats (which skip a busy connection) keep reaching the server.
                grad, loss_sum = current.batch.gradient(current.weights)
                if in_flight is not None and ahead.following.batch == 0:
                    ahead.weights, in_flight = self._collect(in_flight, trained)
                after = None if ahead is None else self._step(next(batches, None))
                reason = None if ahead is None else stop_reason()
                owed = 0 if in_flight is None else len(ahead.batch.keys) * current.weights[:1].nbytes  # reply bytes
                if in_flight is not None and after is not None and reason is None and self._quiet() \
                        and owed <= SEND_BEHIND_MAX_REPLY_BYTES:
                    behind = self.ps.start_push_pull(self.table, current.batch.keys, grad, after.batch.keys)
                    self._count(current, loss_sum)
                    ahead.weights = in_flight.wait()  # the journal waits for a step that reads first
                    in_flight, behind, trained = behind, None, current.following
                    current, ahead = ahead, after
                    continue
                if in_flight is not None:
                    ahead.weights, in_flight = self._collect(in_flight, trained)
                if reason is None and ahead is not None and self.ps.stop_requested:
                    reason = "stopped"  # as the reply just read says
                if reason == "stopped":  # drop this step, which a resumed run will train
                    return reason, trained
                if reason:
                    after = None  # read ahead, not trained: the next generation starts at this step's end
                last = ahead is None or reason is not None
                self._count(current, loss_sum)
                self._report(last=last)  # if due, while nothing is in flight
                if after is None:
                    self.ps.push(self.table, current.batch.keys, grad)
                else:
                    in_flight = self.ps.start_push_pull(self.table, current.batch.keys, grad, after.batch.keys)
                trained = current.following
                if last:
                    return reason or "done", None if ahead is None else trained
                current, ahead = ahead, after
        finally:
            for pending in (in_flight, behind):  # leaving on an error: read the replies, so the client stays usable
                if pending is not None:
                    with contextlib.suppress(Exception):
                        pending.wait()

    def _collect(self, in_flight: PendingReply, trained: Position) -> tuple[np.ndarray, None]:
        """The reply in flight. Its push has then reached the server, so the journal may say the
        steps up to ``trained`` are done (a write to storage, made while nothing is in flight)."""
        weights = in_flight.wait()
        self.journal.note(trained, self.stats)
        return weights, None

    def _quiet(self) -> bool:
        """No loss report and no journal entry due: this step may send before it reads."""
        now = time.monotonic()
        return now < self.next_report_at and not self.journal.due(now)

    def _step(self, item: tuple | None) -> _Step | None:
        return None if item is None else _Step(item[0], self.make_batch(item[1]))

    def _count(self, step: _Step, loss_sum: float) -> None:
        self.stats["updates"] += 1
        for acc in (self.stats, self.window):
            acc["examples"] += len(step.batch)
            acc["loss_sum"] += loss_sum

    def _report(self, *, last: bool) -> None:
        if last or time.monotonic() >= self.next_report_at:
            self.next_report_at = time.monotonic() + self.report_interval_s
            self.ps.report(self.table, "train_loss", self.window["loss_sum"] / max(1, self.window["examples"]),
                           count=self.window["examples"], worker=self.worker)
            self.window = {"examples": 0, "loss_sum": 0.0}


class _Journal:
    """Where the invocation is, written to storage every ``every_s`` seconds and at its end:
    ``{"worker", "generation", "position", "examples", "updates"}`` (position None: done)."""

    def __init__(self, storage: Storage, uri: str | None, worker: int, generation: int, *, every_s: float) -> None:
        self.storage, self.uri, self.worker, self.generation = storage, uri, worker, generation
        self.every_s = every_s
        self.next_at = time.monotonic() + every_s
        self.writes = 0

    def due(self, now: float) -> bool:
        return self.uri is not None and now >= self.next_at

    def note(self, position: Position | None, stats: dict, *, final: bool = False) -> None:
        if self.uri is None or not (final or self.due(time.monotonic())):
            return
        self.next_at = time.monotonic() + self.every_s
        self.writes += 1
        self.storage.write_text(self.uri, json.dumps({
            "worker": self.worker, "generation": self.generation,
            "position": None if position is None else position.to_json(),
            "examples": stats["examples"], "updates": stats["updates"],
        }))


@contextlib.contextmanager
def _heartbeats(ps: PSClient, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Keep the registration alive while the loop waits on storage (a slow shard read):
    a silent worker past the server's heartbeat timeout could be replaced by a duplicate."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            try:
                ps.heartbeat()
            except PSError as error:  # the training loop's own next request reports it
                log.warning("heartbeat to the parameter server failed: %s", error)
                return

    thread = threading.Thread(target=beat, name="ps-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _cache_budget(context: Any) -> int:
    """Bytes of decoded row groups this invocation may keep: a share of what its memory size
    (Lambda's ``memory_limit_in_mb``) leaves beside the runtime as it stands (the interpreter,
    numpy and pyarrow take some 65-125 MB); none without a Lambda context."""
    memory_mb = getattr(context, "memory_limit_in_mb", None)
    if memory_mb is None:
        return 0
    return int(max(0.0, float(memory_mb) * 2**20 - _resident_bytes()) * DECODED_CACHE_SHARE)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux); its peak so far elsewhere."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource  # Unix only, as is a Lambda runtime

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


def _stop_reason(ps: PSClient, context: Any, deadline: float | None, margin_ms: int) -> str | None:
    """Why this invocation should stop before the next step, if it should: "stopped"
    (the server says so: drop the step), "deadline" (the run's time budget is spent)
    or "handover" (the Lambda time limit is near: a fresh invocation takes over)."""
    if ps.stop_requested:
        return "stopped"
    if deadline is not None and time.time() >= deadline:
        return "deadline"
    if context is not None and context.get_remaining_time_in_millis() < margin_ms:
        return "handover"
    return None
