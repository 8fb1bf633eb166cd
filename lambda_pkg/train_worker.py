"""The training worker: asynchronous minibatch SGD against the parameter server.

One invocation trains until its work is done, the run's deadline passes, the server
says stop, or its own Lambda time limit comes near. In the last case it returns
its position, and the driver starts a fresh invocation (the next generation) that
resumes there: Lambda's 15-minute limit never cuts a worker off mid-step.

The loop keeps one round trip per minibatch: the gradient of minibatch t and the
pull of minibatch t+1's weights travel together (``push_pull``).

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
import threading
import time
from collections.abc import Iterator
from typing import Any

from cirrus_airflow.models import registry
from cirrus_airflow.storage import Storage
from lambda_pkg.data_iterator import Position, minibatches
from ps_service.client import PSClient
from ps_service.errors import PSAuthError, PSConnectionError, PSError

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # well inside the server's default 30 s heartbeat timeout
PROGRESS_S = 5.0


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
    report_every = max(1, int(event.get("report_every", 20)))
    worker = int(event["worker_id"])
    generation = int(event.get("generation", 0))
    start = Position.from_json(event.get("resume"))

    stats = {"examples": 0, "updates": 0, "loss_sum": 0.0}
    window = {"examples": 0, "loss_sum": 0.0}
    status, resume = "done", None
    storage = Storage()
    journal = _Journal(storage, event.get("progress_uri"), worker, generation,
                       every_s=float(event.get("progress_interval_s", PROGRESS_S)))
    batches = minibatches(
        units, storage=storage, minibatch=int(event["minibatch"]), epochs=int(event["epochs"]),
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
                    "resume": None, "examples": 0, "updates": 0, "train_loss": 0.0}
        with _heartbeats(ps, float(event.get("heartbeat_s", HEARTBEAT_S))):
            item = next(batches, None)
            if item is not None:
                following, rows = item
                batch = registry.minibatch(model, params, rows)
                weights = ps.pull(table, batch.keys)
            while item is not None:
                grad, loss_sum = batch.gradient(weights)
                item = next(batches, None)
                stop_reason = None if item is None else _stop_reason(ps, context, deadline, margin_ms)
                if stop_reason == "stopped":
                    status = stop_reason
                    break
                if item is None or stop_reason:
                    ps.push(table, batch.keys, grad)
                else:
                    next_batch = registry.minibatch(model, params, item[1])
                    weights = ps.push_pull(table, batch.keys, grad, next_batch.keys)
                stats["updates"] += 1
                for acc in (stats, window):
                    acc["examples"] += len(batch)
                    acc["loss_sum"] += loss_sum
                if stats["updates"] % report_every == 0 or item is None or stop_reason:
                    ps.report(table, "train_loss", window["loss_sum"] / max(1, window["examples"]),
                              count=window["examples"], worker=worker)
                    window = {"examples": 0, "loss_sum": 0.0}
                journal.note(following, stats)
                if stop_reason:
                    status, resume = stop_reason, following.to_json()
                    break
                if item is not None:
                    following, batch = item[0], next_batch
            batches.close()
        ps.deregister("handover" if status == "handover" else "finished")
    journal.note(None if status == "done" else following, stats, final=True)
    return {
        "worker_id": worker,
        "generation": generation,
        "status": status,
        "resume": resume if status == "handover" else None,
        "examples": stats["examples"],
        "updates": stats["updates"],
        "train_loss": stats["loss_sum"] / max(1, stats["examples"]),
    }


class _Journal:
    """Where the invocation is, written to storage every ``every_s`` seconds and at its end:
    ``{"worker", "generation", "position", "examples", "updates"}`` (position None: done)."""

    def __init__(self, storage: Storage, uri: str | None, worker: int, generation: int, *, every_s: float) -> None:
        self.storage, self.uri, self.worker, self.generation = storage, uri, worker, generation
        self.every_s = every_s
        self.next_at = time.monotonic() + every_s

    def note(self, position: Position | None, stats: dict, *, final: bool = False) -> None:
        if self.uri is None or (not final and time.monotonic() < self.next_at):
            return
        self.next_at = time.monotonic() + self.every_s
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
