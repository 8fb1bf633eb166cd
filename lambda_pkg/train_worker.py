"""The training worker: asynchronous minibatch SGD against the parameter server.

One invocation trains until its work is done, the run's deadline passes, the server
says stop, or its own Lambda time limit comes near. In the last case it returns
its position, and the driver starts a fresh invocation (the next generation) that
resumes there: Lambda's 15-minute limit never cuts a worker off mid-step.

The loop keeps one round trip per minibatch: the gradient of minibatch t and the
pull of minibatch t+1's weights travel together (``push_pull``).
"""

from __future__ import annotations

import time
from typing import Any

from cirrus_airflow.models.logistic import Minibatch
from cirrus_airflow.storage import Storage
from lambda_pkg.data_iterator import Position, minibatches
from ps_service.client import PSClient

DEFAULT_SAFETY_MARGIN_MS = 3000


def worker_task(event: dict, context: Any) -> dict:
    if event.get("model") != "lr":
        raise ValueError(f"unsupported model {event.get('model')!r}; this worker trains 'lr'")
    units = [(uri, int(group)) for uri, group in event["units"]]
    if not units:
        raise ValueError("train.worker got no work units; the driver must give each worker at least one")
    table = event["table"]
    bias_key = int(event["feature_dim"])
    margin_ms = int(event.get("safety_margin_ms", DEFAULT_SAFETY_MARGIN_MS))
    deadline = event.get("deadline")
    report_every = max(1, int(event.get("report_every", 20)))
    worker = int(event["worker_id"])
    start = Position.from_json(event.get("resume"))

    stats = {"examples": 0, "updates": 0, "loss_sum": 0.0}
    window = {"examples": 0, "loss_sum": 0.0}
    status, position = "done", None
    batches = minibatches(
        units, storage=Storage(), minibatch=int(event["minibatch"]), epochs=int(event["epochs"]),
        seed=int(event.get("seed", 0)), worker=worker, start=start,
    )
    with PSClient(event["ps"]["address"], token=event["ps"].get("token")) as ps:
        current = next(batches, None)
        weights = ps.pull(table, Minibatch.of(current[1], bias_key).keys) if current else None
        while current is not None:
            following, rows = current
            batch = Minibatch.of(rows, bias_key)
            grad, loss_sum = batch.gradient(weights)
            stop_reason = _stop_reason(ps, context, deadline, margin_ms)
            current = None if stop_reason else next(batches, None)
            if current is None:
                ps.push(table, batch.keys, grad)
            else:
                weights = ps.push_pull(table, batch.keys, grad, Minibatch.of(current[1], bias_key).keys)
            stats["updates"] += 1
            for acc in (stats, window):
                acc["examples"] += len(rows)
                acc["loss_sum"] += loss_sum
            if stats["updates"] % report_every == 0 or current is None:
                ps.report(table, "train_loss", window["loss_sum"] / max(1, window["examples"]),
                          count=window["examples"], worker=worker)
                window = {"examples": 0, "loss_sum": 0.0}
            if stop_reason:
                status, position = stop_reason, following
        batches.close()
    return {
        "worker_id": worker,
        "generation": int(event.get("generation", 0)),
        "status": status,
        "resume": position.to_json() if status == "handover" and position else None,
        "examples": stats["examples"],
        "updates": stats["updates"],
        "train_loss": stats["loss_sum"] / max(1, stats["examples"]),
    }


def _stop_reason(ps: PSClient, context: Any, deadline: float | None, margin_ms: int) -> str | None:
    """Why this invocation should stop after the current step, if it should."""
    if ps.stop_requested:
        return "stopped"
    if deadline is not None and time.time() >= deadline:
        return "deadline"
    if context is not None and context.get_remaining_time_in_millis() < margin_ms:
        return "handover"
    return None
