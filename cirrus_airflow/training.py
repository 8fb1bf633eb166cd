"""The training driver: a parameter server, W serverless workers, then held-out metrics.

The driver holds no data and does no arithmetic on the hot path. It creates the
model's table on the parameter server, fans out ``train.worker`` invocations (each
with its share of the row groups), hands over to a fresh invocation whenever a
worker nears its Lambda time limit, polls the server's status for a live curve, and
at the end saves the weights and fans out ``evaluate`` over the test shards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import numpy as np

from cirrus_airflow.cost import DEFAULT_MEMORY_MB, Usage, estimate
from cirrus_airflow.executor import InvocationError, LocalLambdaExecutor, ServerlessExecutor
from cirrus_airflow.metrics import RegressionMetrics, constant_log_loss
from cirrus_airflow.model_store import WEIGHTS_NAME, save_model
from cirrus_airflow.models import registry
from cirrus_airflow.models.registry import ModelPlan
from cirrus_airflow.shards import Manifest, read_manifest
from cirrus_airflow.storage import Storage, StorageError, join, normalize
from cirrus_airflow.transforms.workspace import TRANSFORM
from ps_service.client import PSClient
from ps_service.launcher import start_local_server
from ps_service.optimizers import OPTIMIZERS as SERVER_OPTIMIZERS

log = logging.getLogger(__name__)

OPTIMIZERS = tuple(sorted(SERVER_OPTIMIZERS))
# Weights are fetched from the server in chunks of this many keys (frames stay small).
_FETCH_KEYS = 1 << 22
_MIN_IMPROVEMENT = 1e-4
_ATTEMPT = "_attempt.json"  # which table an unfinished attempt trains, and with what settings


class TrainingError(RuntimeError):
    """Training could not finish; the message names the worker or setting at fault."""


@dataclass
class TrainConfig:
    """A training run; validated before anything starts."""

    data: str
    output: str
    model: str = "lr"
    workers: int = 4
    learning_rate: float = 0.1
    optimizer: str = "adagrad"
    l2: float | None = None  # None: the model's default (registry.DEFAULT_L2)
    factors: int = 16
    minibatch: int = 256
    epochs: int = 2
    time_budget_s: float | None = None
    seed: int = 0
    ps_address: str | None = None
    ps_token: str | None = None
    ps_shards: int = 1
    report_interval_s: float = 0.5
    poll_interval_s: float = 1.0
    handover_margin_s: float = 10.0
    worker_silence_s: float = 20.0
    max_replacements: int = 3
    checkpoint_interval_s: float = 30.0
    eval_interval_s: float | None = 5.0  # None: no held-out evaluation while training
    eval_rows: int = 50_000
    target_loss: float | None = None
    patience: int | None = None

    def validate(self) -> None:
        registry.check_model(self.model)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.ps_shards < 1:
            raise ValueError(f"ps_shards must be at least 1, got {self.ps_shards}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.l2 is not None and not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be zero or positive (or None for the model's default), got {self.l2}")
        if self.factors < 1:
            raise ValueError(f"factors must be at least 1, got {self.factors}")
        if self.minibatch < 1:
            raise ValueError(f"minibatch must be at least 1, got {self.minibatch}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive (or None for no budget), got {self.time_budget_s}")
        if self.handover_margin_s <= 0:
            raise ValueError(f"handover_margin_s must be positive, got {self.handover_margin_s}")
        if self.eval_interval_s is not None and not self.eval_interval_s > 0:
            raise ValueError(f"eval_interval_s must be positive (or None for no live evaluation), "
                             f"got {self.eval_interval_s}")
        if not self.report_interval_s > 0:
            raise ValueError(f"report_interval_s must be positive, got {self.report_interval_s}")
        if self.worker_silence_s <= 0:
            raise ValueError(f"worker_silence_s must be positive, got {self.worker_silence_s}")
        if self.checkpoint_interval_s <= 0:
            raise ValueError(f"checkpoint_interval_s must be positive, got {self.checkpoint_interval_s}")
        if self.max_replacements < 0:
            raise ValueError(f"max_replacements must be zero or more, got {self.max_replacements}")
        if self.eval_rows < 1:
            raise ValueError(f"eval_rows must be at least 1, got {self.eval_rows}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be at least 1 evaluation (or None), got {self.patience}")
        if self.target_loss is not None and not (self.target_loss > 0 and math.isfinite(self.target_loss)):
            raise ValueError(f"target_loss must be a positive number (or None), got {self.target_loss}")
        if self.eval_interval_s is None and (self.target_loss is not None or self.patience is not None):
            raise ValueError("target_loss and patience stop on the live held-out loss: they need eval_interval_s")
        if not self.data or not self.output:
            raise ValueError("data and output must both be URIs (a local path or s3://bucket/prefix)")

    @property
    def effective_l2(self) -> float:
        return registry.DEFAULT_L2[self.model] if self.l2 is None else self.l2


@dataclass
class _Invocation:
    worker: int
    generation: int
    started: float
    resume: dict | None  # where it started


class TrainingJob:
    """One training run; ``cancel()`` may be called from another thread (``on_kill``)
    and stops the workers and the parameter server."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        storage: Storage,
        executor: ServerlessExecutor,
        progress: Callable[[dict], None] | None = None,
    ) -> None:
        config.validate()
        time_limit = getattr(executor, "time_limit_s", None)
        if time_limit is not None and config.handover_margin_s >= time_limit:
            raise ValueError(
                f"handover_margin_s={config.handover_margin_s} must be less than the workers' time limit "
                f"({time_limit:g} s): a worker hands over to a fresh invocation that long before its limit"
            )
        if config.workers > executor.max_concurrency:
            raise ValueError(
                f"workers={config.workers} exceeds the executor's max_concurrency={executor.max_concurrency}: "
                "the extra workers would wait for a slot instead of training; raise max_concurrency or lower workers"
            )
        # The live evaluator is an invocation of its own, beside the workers.
        self.live_eval = config.eval_interval_s is not None and config.workers < executor.max_concurrency
        if config.eval_interval_s is not None and not self.live_eval:
            if config.target_loss is not None or config.patience is not None:
                raise ValueError(
                    f"target_loss and patience need a live evaluator, an invocation beside the {config.workers} "
                    f"workers: raise the executor's max_concurrency above {config.workers} or lower workers")
            log.warning("no invocation slot is left beside the %d workers for the live evaluator: the held-out "
                        "loss is measured at the end only", config.workers)
        self.config = config
        self.storage = storage
        self.executor = executor
        self.progress = progress
        # A table of its own: an existing server may hold other runs' tables, or a
        # stopped table of an earlier attempt of this one.
        self.table = f"{config.model}-{uuid.uuid4().hex[:12]}"
        self._cancelled = threading.Event()
        self._stop_request: str | None = None
        self._server: tuple[str, str | None] | None = None
        self._last_report_t: float | None = None  # the newest report seen, in the server's clock

    def request_stop(self, reason: str) -> None:
        """End the training early from any thread (a search stopping a hopeless
        configuration, a user's kill button): the workers stop at their next step, and the
        run still saves its model and evaluates it, with ``stopped_by`` set to ``reason``."""
        self._stop_request = reason

    def cancel(self) -> None:
        """Stop the run from any thread: the workers learn it from the server's stop
        flag (on a connection of its own: the run's may be mid-request) and the
        executor stops what it started."""
        self._cancelled.set()
        server = self._server
        if server is not None:
            with contextlib.suppress(Exception), PSClient(server[0], token=server[1], timeout=10) as client:
                client.stop(self.table)
        self.executor.cancel()

    def run(self) -> dict:
        cfg = self.config
        data, output = normalize(cfg.data), normalize(cfg.output)
        manifest = read_manifest(self.storage, data)
        try:
            plan = registry.plan(cfg.model, manifest, factors=cfg.factors)
        except ValueError as exc:
            raise TrainingError(f"{data}: {exc}") from None
        units = [(uri, g) for uri, entry in zip(manifest.shard_uris(data, "train"), manifest.shards["train"])
                 for g in range(entry["row_groups"])]
        workers = min(cfg.workers, len(units))
        if workers < cfg.workers:
            log.warning("only %d row groups to train on: using %d workers instead of %d", len(units), workers,
                        cfg.workers)
        summary_uri = join(output, "summary.json")
        progress, checkpoint = _journals(output), join(output, "_checkpoint")
        fingerprint = _fingerprint(cfg, workers)
        previous = self._previous_attempt(output, fingerprint, finished=summary_uri)
        self.storage.delete(summary_uri)  # a summary, when present, describes a finished run
        restore = previous is not None and bool(self.storage.list(checkpoint))
        if not restore:
            self.storage.delete_tree(checkpoint)
        with self._parameter_server(checkpoint, restore) as (address, token), \
                PSClient(address, token=token) as client:
            self._server = (address, token)
            try:
                journals = self._start_attempt(client, previous, output, fingerprint, progress)
                client.create_table(self.table, **plan.table_options(), seed=cfg.seed, optimizer=cfg.optimizer,
                                    learning_rate=cfg.learning_rate, l2=cfg.effective_l2)
                started = time.time()
                base_event = {
                    "task": "train.worker", "model": cfg.model, "table": self.table,
                    "ps": {"address": address, "token": token}, "model_params": plan.params,
                    "minibatch": cfg.minibatch, "epochs": cfg.epochs, "seed": cfg.seed,
                    "report_interval_s": cfg.report_interval_s, "handover_margin_ms": int(cfg.handover_margin_s * 1000),
                    # several heartbeats inside the silence that gets a worker replaced
                    "heartbeat_s": min(5.0, cfg.worker_silence_s / 4),
                    "progress_interval_s": min(5.0, cfg.worker_silence_s / 4),
                    "deadline": None if cfg.time_budget_s is None else started + cfg.time_budget_s,
                }
                evaluator = self._live_evaluator(manifest, data, plan, address, token)
                outcome = self._train(client, base_event, _partition(units, workers), started, evaluator, journals)
                train_seconds = time.time() - started
                weights = _fetch_weights(client, self.table, plan.size)
                client.drop_table(self.table)  # a shared server must not keep every run's table
            finally:
                self._server = None
        model_uri = join(output, "model")
        _copy_transform_files(self.storage, data, model_uri)
        save_model(self.storage, model_uri, weights, {
            "model": cfg.model, "feature_dim": manifest.feature_dim, "params": plan.params,
            "data": data, "transform": manifest.transform, "config": _config_json(cfg),
            "input": {key: manifest.source.get(key) for key in ("format", "format_options")},
        })
        evaluated = time.time()
        test = self._evaluate(manifest, data, plan, join(model_uri, WEIGHTS_NAME), workers)
        evaluation_seconds = time.time() - evaluated
        metrics_uri = join(output, "metrics.jsonl")
        self.storage.write_text(metrics_uri, "".join(json.dumps(p) + "\n" for p in outcome["curve"]))
        summary = {
            "model": cfg.model,
            "model_uri": model_uri,
            "metrics_uri": metrics_uri,
            **test.summary(),
            **_baseline(test, manifest, plan),
            "train_loss": outcome["train_loss"],
            "best_test_loss": outcome["best_test_loss"],
            "examples": outcome["examples"],
            "updates": outcome["updates"],
            "examples_per_second": outcome["examples"] / max(train_seconds, 1e-9),
            # One worker's rate inside its training loop (start-ups and hand-overs excluded).
            "worker_loop_examples_per_second": outcome["loop_examples"] / max(outcome["loop_seconds"], 1e-9),
            "workers": workers,
            "invocations": outcome["invocations"],
            "replacements": outcome["replacements"],
            "worker_seconds": outcome["worker_seconds"],
            "stopped_by": outcome["stopped_by"],
            "train_seconds": train_seconds,
            "resumed": bool(journals),
        }
        summary["cost"] = estimate(self._usage(manifest, data, outcome, train_seconds, evaluation_seconds, workers))
        summary["estimated_cost_usd"] = summary["cost"]["total_usd"]
        self.storage.write_text(summary_uri, json.dumps(summary, indent=1, sort_keys=True))
        for leftover in (progress, checkpoint):
            self.storage.delete_tree(leftover)
        self.storage.delete(join(output, _ATTEMPT))
        return summary

    def _usage(self, manifest: Manifest, data: str, outcome: dict, train_seconds: float, evaluation_seconds: float,
               workers: int) -> Usage:
        """What the run used, as AWS would bill it (see ``cirrus_airflow.cost``). The workers count
        their own storage requests; evaluations are counted from the test rows they read, and the
        driver's writes from what it writes (model, summary, curve, checkpoints)."""
        cfg = self.config
        test_groups = sum(entry["row_groups"] for entry in manifest.shards.get("test", []))
        test_shards = len(manifest.shards.get("test", []))
        live = outcome["live_evaluations"]
        live_groups = -(-min(cfg.eval_rows, manifest.rows("test")) // max(1, manifest.row_group_rows))
        final_invocations = min(workers, test_shards)
        checkpoints = 0 if cfg.ps_address else cfg.ps_shards * int(train_seconds // cfg.checkpoint_interval_s + 1)
        return Usage(
            worker_seconds=outcome["worker_seconds"] + evaluation_seconds * final_invocations,
            memory_mb=self._memory_mb(),
            invocations=outcome["invocations"] + final_invocations,
            ps_instances=self._ps_instances(),
            ps_seconds=train_seconds,
            s3_gets=outcome["storage_gets"] + live * (live_groups + 1) + test_groups + test_shards,
            s3_puts=outcome["storage_puts"] + checkpoints + 4 + len(self.storage.list(join(data, TRANSFORM))),
        )

    def _memory_mb(self) -> int:
        return getattr(self.executor, "memory_mb", None) or DEFAULT_MEMORY_MB

    def _ps_instances(self) -> int:
        return 1 if self.config.ps_address else self.config.ps_shards

    def _previous_attempt(self, output: str, fingerprint: dict, *, finished: str) -> dict | None:
        """An earlier attempt of this same run (same output, data and settings) that did not
        finish: its table's name and its workers' journals. A retried task resumes it."""
        try:
            state = json.loads(self.storage.read_text(join(output, _ATTEMPT)))
        except (StorageError, json.JSONDecodeError):
            return None
        if state.get("fingerprint") != fingerprint or self.storage.exists(finished):
            return None
        journals = [json.loads(self.storage.read_text(uri)) for uri in self.storage.list(_journals(output))]
        return {"table": state["table"], "journals": {int(j["worker"]): j for j in journals}}

    def _start_attempt(self, client: PSClient, previous: dict | None, output: str, fingerprint: dict,
                       progress: str) -> dict[int, dict]:
        """Resume the previous attempt if its table is still on the server (restored from the
        checkpoint, or kept by a server of its own), else start afresh; returns the journals
        the workers resume from (none when starting afresh)."""
        if previous is not None and previous["table"] in client.status()["tables"]:
            self.table = previous["table"]
            log.info("resuming the previous attempt: table %s, %d worker journals", self.table,
                     len(previous["journals"]))
            return previous["journals"]
        self.storage.delete_tree(progress)
        self.storage.write_text(join(output, _ATTEMPT), json.dumps({"table": self.table, "fingerprint": fingerprint}))
        return {}

    @contextlib.contextmanager
    def _parameter_server(self, checkpoint: str, restore: bool) -> Iterator[tuple[str, str | None]]:
        """The run's server: the configured one, or one of its own that checkpoints its
        tables to ``checkpoint`` (and starts from there when ``restore``)."""
        if self.config.ps_address:
            if not isinstance(self.executor, LocalLambdaExecutor) and self.config.ps_address.startswith("127."):
                log.warning("parameter server %s is on loopback: remote Lambda workers cannot reach it",
                            self.config.ps_address)
            yield self.config.ps_address, self.config.ps_token
            return
        token = secrets.token_urlsafe(24)
        with start_local_server(token=token, shards=self.config.ps_shards, checkpoint_uri=checkpoint,
                                checkpoint_interval_s=self.config.checkpoint_interval_s,
                                restore_uri=checkpoint if restore else None) as server:
            log.info("started a parameter server at %s (pids %s)", server.address, server.pids)
            yield server.address, token

    def _live_evaluator(self, manifest: Manifest, data: str, plan: ModelPlan, address: str,
                        token: str | None) -> _LiveEvaluator | None:
        cfg = self.config
        shards = manifest.shard_uris(data, "test")
        if not self.live_eval or not shards or cfg.eval_interval_s is None:
            if cfg.target_loss is not None or cfg.patience is not None:
                raise TrainingError(f"{data} has no test shards: target_loss and patience need held-out rows; "
                                    "preprocess with test_fraction > 0 or a test input")
            return None
        event = {"task": "evaluate", "model": plan.model, "model_params": plan.params, "shards": shards,
                 "max_rows": cfg.eval_rows, "table": self.table, "ps": {"address": address, "token": token}}
        return _LiveEvaluator(self.executor, event, interval_s=cfg.eval_interval_s, target=cfg.target_loss,
                              patience=cfg.patience)

    def _train(self, client: PSClient, base_event: dict, shares: list[list], started: float,
               evaluator: _LiveEvaluator | None, journals: dict[int, dict]) -> dict:
        """Run the workers to the end; on any failure or cancel, stop them all first."""
        try:
            outcome = self._run_workers(client, base_event, shares, started, evaluator, journals)
        except BaseException:
            self._stop_everything(client)
            raise
        if self._cancelled.is_set():
            self._stop_everything(client)
            raise TrainingError("training was cancelled; workers and parameter server were stopped")
        return outcome

    def _stop_everything(self, client: PSClient) -> None:
        with contextlib.suppress(Exception):
            client.stop(self.table)
        self.executor.cancel()

    def _run_workers(self, client: PSClient, base_event: dict, shares: list[list], started: float,
                     evaluator: _LiveEvaluator | None, journals: dict[int, dict]) -> dict:
        fleet = _Fleet(self.executor, self.storage, base_event, shares, self.config, journals)
        curve: list[dict] = []
        stopped_by = "epochs"
        while fleet.running and not self._cancelled.is_set():
            watched = list(fleet.running) + ([evaluator.future] if evaluator and evaluator.future else [])
            done, _ = wait(watched, timeout=self.config.poll_interval_s, return_when=FIRST_COMPLETED)
            if self._cancelled.is_set():
                break
            for future in done & fleet.running.keys():  # the evaluator's is collected below
                status = fleet.finished(future)
                if status == "deadline":
                    stopped_by = "time_budget"
                elif status == "stopped" and stopped_by == "epochs":
                    stopped_by = "stopped"
            held_out = evaluator.collect() if evaluator else None
            if held_out is not None:
                fleet.totals["live_evaluations"] += 1
                fleet.totals["invocations"] += 1
                fleet.totals["worker_seconds"] += held_out.pop("seconds")
                verdict = evaluator.verdict(held_out["test_loss"])
                if verdict and stopped_by == "epochs":
                    log.info("stopping: %s (held-out loss %.5f)", verdict.replace("_", " "), held_out["test_loss"])
                    stopped_by = verdict
                    client.stop(self.table)
            if self._stop_request and stopped_by == "epochs":
                log.info("stopping: %s", self._stop_request)
                stopped_by = self._stop_request
                client.stop(self.table)
            if evaluator and fleet.running and stopped_by == "epochs":
                evaluator.maybe_launch()
            status = client.status(reports_since=self._last_report_t)
            if stopped_by == "epochs":
                fleet.replace_silent(status, self.table)
            curve.append(self._poll(status, started, held_out, fleet))
        totals = fleet.totals
        return {
            **totals,
            "train_loss": totals["loss_sum"] / max(1, totals["examples"]),
            "best_test_loss": evaluator.best if evaluator else None,
            "curve": curve,
            "stopped_by": stopped_by,
        }

    def _poll(self, status: dict, started: float, held_out: dict | None, fleet: _Fleet) -> dict:
        """One point of the live curve: updates so far, the mean training loss of the
        reports that arrived since the previous point (``status`` was asked only for reports
        newer than its newest, by the server's clock), the held-out metrics of an evaluation
        that ended since, and worker-seconds and dollars so far (so that a search's budgets
        and the dashboard's loss-against-cost plot see a configuration's spending while it
        runs, not only when it ends)."""
        table = status["tables"].get(self.table, {})
        reports = [r for r in table.get("reports", []) if r["name"] == "train_loss"]
        if reports:
            self._last_report_t = max(r["t"] for r in reports)
        count = sum(r["count"] for r in reports)
        point = {
            "t": round(time.time() - started, 3),
            "updates": table.get("updates", 0),
            "train_loss": sum(r["value"] * r["count"] for r in reports) / count if count else None,
            "examples": count,
            **(held_out or {}),
        }
        elapsed = time.time() - started
        worker_seconds = fleet.worker_seconds_so_far()
        usage = Usage(worker_seconds=worker_seconds, memory_mb=self._memory_mb(),
                      invocations=fleet.totals["invocations"] + len(fleet.running),
                      ps_instances=self._ps_instances(), ps_seconds=elapsed,
                      s3_gets=fleet.totals["storage_gets"], s3_puts=fleet.totals["storage_puts"])
        point["worker_seconds"] = round(worker_seconds, 3)
        point["cost_usd"] = estimate(usage)["total_usd"]
        if self.progress is not None:
            self.progress(point)
        return point

    def _evaluate(self, manifest: Manifest, data: str, plan: ModelPlan, weights_uri: str,
                  workers: int) -> registry.Metrics:
        shards = manifest.shard_uris(data, "test")
        if not shards:
            raise TrainingError(f"{data} has no test shards to evaluate on; preprocess with test_fraction > 0")
        groups = [shards[i::workers] for i in range(min(workers, len(shards)))]
        events = [{"task": "evaluate", "model": plan.model, "model_params": plan.params, "weights_uri": weights_uri,
                   "shards": g} for g in groups]
        metrics = registry.empty_metrics(plan.model)
        for result in self.executor.map(events):
            metrics = metrics.merge(registry.metrics_from_json(plan.model, result))
        return metrics


class _LiveEvaluator:
    """Held-out evaluations of the live model while the workers train: one invocation at a
    time, every ``interval_s``, and the stopping rules on its loss (a target reached, or
    ``patience`` evaluations in a row without a new best)."""

    def __init__(self, executor: ServerlessExecutor, event: dict, *, interval_s: float, target: float | None,
                 patience: int | None) -> None:
        self.executor, self.event = executor, event
        self.interval_s, self.target, self.patience = interval_s, target, patience
        self.future: Future | None = None
        self.started = 0.0
        self.next_at = time.monotonic() + interval_s
        self.best: float | None = None
        self.stale = 0

    def maybe_launch(self) -> None:
        if self.future is None and time.monotonic() >= self.next_at:
            self.started = time.monotonic()
            self.future = self.executor.submit(self.event)

    def collect(self) -> dict | None:
        """The finished evaluation's metrics (held-out loss as ``test_loss``), if one finished."""
        if self.future is None or not self.future.done():
            return None
        future, self.future = self.future, None
        self.next_at = time.monotonic() + self.interval_s
        try:
            metrics = registry.metrics_from_json(self.event["model"], future.result())
        except InvocationError as exc:  # the curve misses a point; training goes on
            log.warning("a live evaluation failed (%s: %s); the next one is in %g s", exc.error_type,
                        exc.error_message, self.interval_s)
            return None
        if not metrics.count:
            return None
        return {**metrics.summary(), "test_loss": registry.held_out_loss(metrics),
                "seconds": time.monotonic() - self.started}

    def verdict(self, loss: float) -> str | None:
        """Why training should stop after this evaluation, if it should. A new best must beat
        the old by ``_MIN_IMPROVEMENT`` (relative): noise-level gains do not reset patience."""
        if self.best is None or loss < self.best * (1 - _MIN_IMPROVEMENT):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        if self.target is not None and loss <= self.target:
            return "target_loss"
        if self.patience is not None and self.stale >= self.patience:
            return "patience"
        return None


class _Fleet:
    """The workers' invocations: launched, handed over at the time limit, and replaced when
    one crashes (its invocation fails) or goes silent (no heartbeat on the server for
    ``worker_silence_s``). A replacement is the next generation, so the server refuses
    whatever the old one still sends; it starts where the old one's journal says it was."""

    def __init__(self, executor: ServerlessExecutor, storage: Storage, base_event: dict, shares: list[list],
                 config: TrainConfig, journals: dict[int, dict]) -> None:
        self.executor, self.storage, self.base_event, self.shares = executor, storage, base_event, shares
        self.silence_s, self.max_replacements = config.worker_silence_s, config.max_replacements
        self.journals = _journals(normalize(config.output))
        self.running: dict[Future, _Invocation] = {}
        self.replaced = [0] * len(shares)
        self.totals = {"examples": 0, "updates": 0, "invocations": 0, "worker_seconds": 0.0, "loss_sum": 0.0,
                       "loop_examples": 0, "loop_seconds": 0.0,
                       "replacements": 0, "storage_gets": 0, "storage_puts": 0, "live_evaluations": 0}
        for worker in range(len(shares)):  # from where an earlier attempt's journal says, if any
            journal = journals.get(worker)
            if journal is None:
                self.launch(worker, 0, None)
                continue
            self.totals["examples"] += journal["examples"]
            self.totals["updates"] += journal["updates"]
            if journal["position"] is not None:
                self.launch(worker, journal["generation"] + 1, journal["position"])

    def launch(self, worker: int, generation: int, resume: dict | None) -> None:
        event = {**self.base_event, "worker_id": worker, "generation": generation, "resume": resume,
                 "units": [list(u) for u in self.shares[worker]], "progress_uri": self._journal(worker)}
        self.running[self.executor.submit(event)] = _Invocation(worker, generation, time.time(), resume)

    def finished(self, future: Future) -> str | None:
        """Account for an invocation that ended, start what comes next; returns its status."""
        inv = self.running.pop(future)
        self.totals["invocations"] += 1
        self.totals["worker_seconds"] += time.time() - inv.started
        try:
            result = future.result()
        except InvocationError as exc:
            self._replace(inv, f"failed ({exc.error_type}: {exc.error_message})")
            return None
        self.totals["examples"] += result["examples"]
        self.totals["updates"] += result["updates"]
        self.totals["loss_sum"] += result["train_loss"] * result["examples"]
        self.totals["loop_examples"] += result["examples"] if "loop_seconds" in result else 0
        self.totals["loop_seconds"] += result.get("loop_seconds", 0.0)  # (worker packages before it had none)
        self.totals["storage_gets"] += result["storage_requests"]["get"]
        self.totals["storage_puts"] += result["storage_requests"]["put"]
        if result["status"] == "handover":
            self.launch(inv.worker, inv.generation + 1, result["resume"])
        elif result["status"] == "rejected":
            log.warning("worker %d generation %d was refused by the parameter server (%s); "
                        "another invocation holds its work", inv.worker, inv.generation, result["reason"])
        return result["status"]

    def worker_seconds_so_far(self) -> float:
        """Ended invocations' seconds and the running ones' so far."""
        now = time.time()
        return self.totals["worker_seconds"] + sum(now - inv.started for inv in self.running.values())

    def replace_silent(self, status: dict, table: str) -> None:
        """Replace every running invocation whose registration has gone without a heartbeat."""
        silent = {(r["worker"], r["generation"]) for r in status.get("workers", [])
                  if r["run"] == table and r["state"] in ("active", "expired")
                  and r["heartbeat_age_s"] > self.silence_s}
        for future, inv in list(self.running.items()):
            if (str(inv.worker), inv.generation) in silent:
                del self.running[future]  # whatever it returns from now on is the superseded generation's
                self.totals["invocations"] += 1
                self.totals["worker_seconds"] += time.time() - inv.started
                self._replace(inv, f"went silent (no heartbeat for over {self.silence_s:g} s)")

    def _replace(self, inv: _Invocation, why: str) -> None:
        self.replaced[inv.worker] += 1
        if self.replaced[inv.worker] > self.max_replacements:
            raise TrainingError(f"worker {inv.worker} (generation {inv.generation}) {why}, and it was replaced "
                                f"{self.max_replacements} times already: giving up")
        journal = self._read_journal(inv)
        if journal is not None:
            self.totals["examples"] += journal["examples"]
            self.totals["updates"] += journal["updates"]
            if journal["position"] is None:  # it had finished its work
                return
        resume = inv.resume if journal is None else journal["position"]
        self.totals["replacements"] += 1
        log.warning("worker %d generation %d %s; generation %d takes over at %s", inv.worker, inv.generation, why,
                    inv.generation + 1, resume or "the start")
        self.launch(inv.worker, inv.generation + 1, resume)

    def _journal(self, worker: int) -> str:
        return join(self.journals, f"worker-{worker:05d}.json")

    def _read_journal(self, inv: _Invocation) -> dict | None:
        """The failed generation's last journal entry; None if it never wrote one."""
        try:
            entry = json.loads(self.storage.read_text(self._journal(inv.worker)))
        except StorageError:
            return None
        return entry if entry.get("generation") == inv.generation else None


def _partition(units: list, workers: int) -> list[list]:
    """Contiguous runs of (shard, row group) units, one per worker: each worker reads
    few shards, and no two workers read the same row group."""
    bounds = np.linspace(0, len(units), workers + 1).astype(int)
    return [units[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _fetch_weights(client: PSClient, table: str, size: int) -> np.ndarray:
    """The whole table, (size, width), pulled in chunks so that no frame gets large."""
    return np.concatenate([
        client.pull(table, np.arange(lo, min(lo + _FETCH_KEYS, size), dtype=np.int64))
        for lo in range(0, size, _FETCH_KEYS)
    ])


def _baseline(test: registry.Metrics, manifest: Manifest, plan: ModelPlan) -> dict:
    """The held-out loss of a constant prediction from the training rows: what a model must beat."""
    if isinstance(test, RegressionMetrics):
        return {"baseline_rmse": test.constant_rmse(plan.params["mean"])}
    train_rate = manifest.label_stats.get("train_positive_rate", test.positive_rate)
    return {"baseline_logloss": constant_log_loss(train_rate, test.positive_rate)}


def _journals(output: str) -> str:
    """Where the workers of a run write where they are (see ``lambda_pkg.train_worker``)."""
    return join(output, "_progress")


def _copy_transform_files(storage: Storage, data: str, model_uri: str) -> None:
    """The fitted transform's files (id mappings, bucket mask, scales) into the model folder,
    at the same relative paths, so that the model alone can turn raw rows into features."""
    for uri in storage.list(join(data, TRANSFORM)):
        storage.write_bytes(join(model_uri, uri[len(data) + 1:]), storage.read_bytes(uri))


def _fingerprint(cfg: TrainConfig, workers: int) -> dict:
    """What an attempt must share with an earlier one to resume it: the data, the model and
    its optimisation, and the workers' shares of the row groups."""
    return {"data": normalize(cfg.data), "model": cfg.model, "factors": cfg.factors, "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate, "l2": cfg.effective_l2, "minibatch": cfg.minibatch,
            "epochs": cfg.epochs, "seed": cfg.seed, "workers": workers, "ps_shards": cfg.ps_shards}


def _config_json(cfg: TrainConfig) -> dict:
    doc = dict(cfg.__dict__)
    doc.pop("ps_token", None)
    return doc
