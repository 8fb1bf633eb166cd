"""The search driver: many trainings at once, hopeless ones stopped early, within budgets.

Up to ``concurrency`` configurations train at the same time, each a ``TrainingJob`` of
its own (its workers, its live evaluator, its table) on one shared parameter server.
Every live held-out loss goes to the early-stopping rule with the resource the
configuration has used (training seconds or examples); a configuration the rule gives
up on is stopped at once (its model is still saved and evaluated) and its slot goes to
the next one. Budgets (configurations, worker-seconds, estimated dollars) end the search
cleanly: nothing new starts, and what runs is stopped.

Everything lands under ``<output>/``: each configuration's run under
``configs/<id>/`` with a ``status.json`` written when it ends, and ``results.json``
(every configuration, the best one) written last. A retried search reads the statuses
and runs only the configurations that have none. Another process stops a configuration
(or all, ``all``) by writing ``<output>/_kill/<id>``, which the search reads every second
(``request_kill``: the command line's ``tune kill``, the dashboard's button).
While it runs, the search rewrites ``<output>/live.json`` (the same document as
``results.json``, with ``state: running``) whenever a configuration moves on: that is
what the dashboard shows. At the end, ``report.html`` and PNG plots are written beside
the results (``cirrus_airflow.dashboard.report``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cirrus_airflow.executor import ExecutorSettings, ServerlessExecutor
from cirrus_airflow.storage import Storage, StorageError, join, normalize
from cirrus_airflow.dashboard import report
from cirrus_airflow.training import TrainConfig, TrainingJob
from cirrus_airflow.tuning import early_stopping
from cirrus_airflow.tuning.layout import DONE, KILL_FOLDER, LIVE, RESULTS, RUNNING, finite
from ps_service.launcher import start_local_server

log = logging.getLogger(__name__)

RESOURCES = ("seconds", "examples")
FINISHED, STOPPED_EARLY, KILLED, FAILED, OVER_BUDGET = "finished", "stopped_early", "killed", "failed", "over_budget"
# The run-level settings of a configuration's TrainConfig that the search owns.
_OWNED = ("data", "output", "model", "ps_address", "ps_token")
ExecutorFactory = Callable[[dict], ServerlessExecutor]


@dataclass
class TuneConfig:
    """A search: the configurations to try and how to run them; validated up front."""

    data: str
    output: str
    configs: list[dict]
    model: str = "lr"
    base: dict = field(default_factory=dict)  # training settings every configuration shares
    early_stopping: str = "asha"
    resource: str = "seconds"
    grace: float = 5.0  # resource of ASHA's first rung, or before which the median rule waits
    eta: float = 3.0
    concurrency: int = 4
    max_configs: int | None = None
    budget_worker_seconds: float | None = None
    budget_dollars: float | None = None
    ps_shards: int = 1
    seed: int = 0  # of the launch order

    def validate(self) -> None:
        if not self.configs:
            raise ValueError("configs is empty: give a grid or random samples to search")
        owned = sorted({k for c in [self.base, *self.configs] for k in c} & set(_OWNED))
        if owned:
            raise ValueError(f"{', '.join(owned)} belong(s) to the search, not to a configuration")
        if self.resource not in RESOURCES:
            raise ValueError(f"resource must be one of {RESOURCES}, got {self.resource!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        for name in ("max_configs", "budget_worker_seconds", "budget_dollars"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (or None for no limit), got {value}")
        early_stopping.make(self.early_stopping, grace=self.grace, eta=self.eta)
        for params in self.configs:
            self.train_config(params, "x").validate()

    def train_config(self, params: dict, output: str, *, ps_address: str | None = None,
                     ps_token: str | None = None) -> TrainConfig:
        settings = {k: v for k, v in {**self.base, **params}.items() if k != "worker_memory_mb"}
        return TrainConfig(data=self.data, output=output, model=self.model, ps_address=ps_address,
                           ps_token=ps_token, **settings)


def executors_for(settings: ExecutorSettings) -> ExecutorFactory:
    """Each configuration's executor, as ``settings`` say but sized for it: its workers and
    its live evaluator at once, and its worker memory if the search varies it."""
    def make(params: dict) -> ServerlessExecutor:
        workers = int(params.get("workers", TrainConfig.workers))
        memory = int(params.get("worker_memory_mb", settings.memory_mb))
        return replace(settings, memory_mb=memory, concurrency=workers + 1).build()
    return make


def config_id(index: int, params: dict) -> str:
    """A stable name for a configuration: its place in the search and a hash of its values."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return f"{index:03d}-{digest}"


class Search:
    """One search; ``kill(config_id)`` and ``cancel()`` may be called from any thread."""

    def __init__(self, config: TuneConfig, *, storage: Storage, executors: ExecutorFactory,
                 progress: Callable[[dict], None] | None = None) -> None:
        config.validate()
        self.config, self.storage, self.executors, self.progress = config, storage, executors, progress
        self.output = normalize(config.output)
        self.rule = early_stopping.make(config.early_stopping, grace=config.grace, eta=config.eta)
        self.trials = [Trial(config_id(i, p), p) for i, p in enumerate(config.configs)]
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._over_budget = False
        self._started_at = time.time()
        self._published = ""

    def kill(self, trial_id: str | None = None) -> None:
        """Stop one configuration (or, with None, every one) as a user asks: it ends as killed."""
        for trial in self.trials:
            if trial_id is None or trial.id == trial_id:
                trial.stop(KILLED)

    def cancel(self) -> None:
        self._cancelled.set()
        self.kill()

    def run(self) -> dict:
        cfg = self.config
        self._load_finished()
        if self.storage.exists(join(self.output, RESULTS)):  # an earlier attempt ended: its requests are stale
            self.storage.delete_tree(join(self.output, KILL_FOLDER))
        # Launched in a seeded random order: a grid lists similar configurations together, and
        # the first ones at a rung always go on, so grid order would let a run of bad ones climb.
        order = np.random.default_rng(cfg.seed).permutation(len(self.trials))
        todo = [self.trials[i] for i in order if self.trials[i].status is None][: self._slots_left()]
        with self._parameter_server() as (address, token), ThreadPoolExecutor(cfg.concurrency) as pool:
            running: dict[Future, Trial] = {}
            queue = list(todo)
            while (queue or running) and not self._cancelled.is_set():
                while queue and len(running) < cfg.concurrency and not self._over_budget:
                    trial = queue.pop(0)
                    running[pool.submit(self._run_trial, trial, address, token)] = trial
                if not running:
                    break
                done, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                self._check_budgets()
                self._read_kill_requests()
                self._publish()
        for trial in self.trials:  # never started: beyond a budget, or the search was cancelled
            if trial.status is None:
                trial.status = KILLED if self._cancelled.is_set() else OVER_BUDGET
        return self._write_results()

    # -- one configuration ----------------------------------------------------------------------------------

    def _run_trial(self, trial: Trial, address: str, token: str) -> None:
        output = join(self.output, "configs", trial.id)
        if trial.stopped_before_start():  # killed (or over budget) while it waited: nothing to pay for
            if trial.status == KILLED:  # a user's decision, kept by a retry; a budget is the retry's own
                self._save_status(trial, output)
            return
        config = self.config.train_config(trial.params, output, ps_address=address, ps_token=token)
        started = time.monotonic()
        trial.started_at = time.time()
        examples = 0

        def observe(point: dict) -> None:
            nonlocal examples
            examples += point.get("examples") or 0
            trial.live = {k: point[k] for k in ("t", "updates", "train_loss", "worker_seconds", "cost_usd")}
            if "test_loss" not in point:
                return
            loss = point["test_loss"]
            diverged = not math.isfinite(loss)
            # JSON has no NaN: a diverged evaluation is a gap in the curve, and +inf to the rules (which stop it).
            trial.curve.append({"t": point["t"], "test_loss": None if diverged else loss,
                                "cost_usd": point["cost_usd"]})
            resource = time.monotonic() - started if self.config.resource == "seconds" else examples
            with self._lock:
                go_on = self.rule.report(trial.id, resource, math.inf if diverged else loss)
            if not go_on:
                log.info("configuration %s stopped early (held-out loss %.5f at %s %g)", trial.id,
                         loss, self.config.resource, resource)
                trial.stop(STOPPED_EARLY)
            if self.progress is not None:
                self.progress({"config": trial.id, **point})

        try:
            with self.executors(trial.params) as executor:
                job = TrainingJob(config, storage=self.storage, executor=executor, progress=observe)
                trial.attach(job)
                summary = job.run()
            trial.finish(summary)
        except Exception as exc:  # noqa: BLE001 - one configuration's failure is its result, not the search's
            log.warning("configuration %s failed: %s", trial.id, exc)
            trial.fail(str(exc))
        self._save_status(trial, output)

    def _save_status(self, trial: Trial, output: str) -> None:
        """What a retried search reads to keep a configuration that ended (see _load_finished)."""
        self.storage.write_text(join(output, "status.json"), json.dumps(finite(trial.to_json()), sort_keys=True))

    # -- budgets, retries, results --------------------------------------------------------------------------

    def _slots_left(self) -> int:
        done = sum(t.status is not None for t in self.trials)
        limit = self.config.max_configs
        return len(self.trials) if limit is None else max(0, limit - done)

    def _check_budgets(self) -> None:
        cfg = self.config
        seconds = sum(t.worker_seconds for t in self.trials)
        dollars = sum(t.cost for t in self.trials)
        over = ((cfg.budget_worker_seconds is not None and seconds >= cfg.budget_worker_seconds)
                or (cfg.budget_dollars is not None and dollars >= cfg.budget_dollars))
        if over and not self._over_budget:
            log.info("budget reached (%.1f worker-seconds, $%.6f): stopping the search", seconds, dollars)
            self._over_budget = True
            for trial in self.trials:
                trial.stop(OVER_BUDGET)

    def _read_kill_requests(self) -> None:
        for uri in self.storage.list(join(self.output, KILL_FOLDER)):
            name = uri.rsplit("/", 1)[-1]
            log.info("kill requested for %s", "every configuration" if name == "all" else name)
            self.kill(None if name == "all" else name)
            if name == "all":
                self._cancelled.set()
            self.storage.delete(uri)

    def _load_finished(self) -> None:
        """A retried search keeps the configurations that ended before (their status is written)."""
        for trial in self.trials:
            try:
                saved = json.loads(self.storage.read_text(join(self.output, "configs", trial.id, "status.json")))
            except (StorageError, json.JSONDecodeError):
                continue
            if saved.get("params") == trial.params:
                trial.restore(saved)

    def _snapshot(self, state: str) -> dict:
        """The search as it stands: live.json while it runs, results.json at the end."""
        cfg = self.config
        configs = [finite(t.to_json()) for t in self.trials]
        ranked = [c for c in configs if c["metric"] is not None and c["status"] in (FINISHED, STOPPED_EARLY)]
        best = min(ranked, key=lambda c: c["metric"]) if ranked else None
        return {
            "state": state,
            "model": cfg.model,
            "metric": "test_logloss" if cfg.model == "lr" else "test_rmse",
            "configs": configs,
            "best": best,
            "worker_seconds_total": sum(c["worker_seconds"] for c in configs),
            "cost_total_usd": sum(c["cost_usd"] for c in configs),
            "early_stopping": cfg.early_stopping,
            "resource": cfg.resource,
            "concurrency": cfg.concurrency,
            "budgets": {"max_configs": cfg.max_configs, "worker_seconds": cfg.budget_worker_seconds,
                        "dollars": cfg.budget_dollars},
            "started_at": self._started_at,
            "output": self.output,
            "results_uri": join(self.output, RESULTS),
        }

    def _publish(self) -> None:
        """Rewrite live.json if anything moved since the last time (at most once a loop, ~1 s).
        A failed write costs the dashboard a second, not the search: the next loop tries again."""
        body = json.dumps(self._snapshot(RUNNING), sort_keys=True, allow_nan=False)
        if body == self._published:
            return
        try:
            self.storage.write_text(join(self.output, LIVE), body)
        except Exception as exc:  # noqa: BLE001 - storage errors of any kind (S3 throttling, a full disk)
            log.warning("could not update %s (will try again): %s", join(self.output, LIVE), exc)
            return
        self._published = body

    def _write_results(self) -> dict:
        results = self._snapshot(DONE)
        results["finished_at"] = time.time()
        text = json.dumps(results, indent=1, sort_keys=True, allow_nan=False)
        self.storage.write_text(results["results_uri"], text)
        self.storage.write_text(join(self.output, LIVE), text)
        report.write_report(self.storage, self.output, results)
        return results

    @contextlib.contextmanager
    def _parameter_server(self) -> Iterator[tuple[str, str]]:
        """One server group for every configuration; each trains a table of its own there."""
        token = secrets.token_urlsafe(24)
        with start_local_server(token=token, shards=self.config.ps_shards) as server:
            yield server.address, token


class Trial:
    """One configuration of the search, as it runs and as it ended."""

    def __init__(self, trial_id: str, params: dict) -> None:
        self.id, self.params = trial_id, params
        self.status: str | None = None
        self.summary: dict | None = None
        self.error: str | None = None
        self.curve: list[dict] = []
        self.live: dict = {}
        self.started_at: float | None = None
        self._job: TrainingJob | None = None
        self._stop: str | None = None
        self._lock = threading.Lock()

    def attach(self, job: TrainingJob) -> None:
        with self._lock:
            self._job = job
            if self._stop is not None:
                job.request_stop(self._stop)

    def stop(self, why: str) -> None:
        with self._lock:
            if self.status is not None or self._stop is not None:
                return
            self._stop = why
            if self._job is not None:
                self._job.request_stop(why)

    def stopped_before_start(self) -> bool:
        """True (and the status is set) if it was stopped before it got an executor."""
        with self._lock:
            if self._stop is None or self._job is not None:
                return False
            self.status = self._stop
            return True

    def finish(self, summary: dict) -> None:
        self.summary = summary
        self.status = self._stop or FINISHED

    def fail(self, message: str) -> None:
        self.error, self.status = message, FAILED

    def restore(self, saved: dict) -> None:
        self.status, self.summary, self.error = saved["status"], saved.get("summary"), saved.get("error")
        self.curve, self.started_at = saved.get("curve", []), saved.get("started_at")

    @property
    def worker_seconds(self) -> float:
        """The summary's once the configuration has ended; until then, the live count."""
        if self.summary is not None:
            return self.summary["worker_seconds"]
        return self.live.get("worker_seconds", 0.0)

    @property
    def cost(self) -> float:
        if self.summary is not None:
            return self.summary["estimated_cost_usd"]
        return self.live.get("cost_usd", 0.0)

    @property
    def best_live_loss(self) -> float | None:
        if self.summary is not None:
            return _finite(self.summary.get("best_test_loss"))
        return min((p["test_loss"] for p in self.curve if p["test_loss"] is not None), default=None)

    def to_json(self) -> dict[str, Any]:
        summary = self.summary or {}
        metric = _finite(summary.get("test_logloss", summary.get("test_rmse")))  # None: diverged, or not ended
        if self.status is not None:
            status = self.status
        elif self._stop is not None:
            status = "stopping"  # (one that never started ends without running)
        else:
            status = RUNNING if self._job is not None else "pending"
        return {
            "id": self.id, "params": self.params, "status": status, "started_at": self.started_at,
            "seconds": self.live.get("t"), "latest_loss": self.curve[-1]["test_loss"] if self.curve else None,
            "metric": metric, "best_live_loss": self.best_live_loss,
            "worker_seconds": self.worker_seconds, "cost_usd": self.cost,
            "model_uri": summary.get("model_uri"), "stopped_by": summary.get("stopped_by"),
            "error": self.error, "summary": self.summary, "curve": self.curve,
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
