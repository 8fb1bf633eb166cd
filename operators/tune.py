"""CirrusTuneOperator: a hyperparameter search, many trainings at once on serverless workers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cirrus_airflow.dashboard import registry
from cirrus_airflow.hooks import CirrusHook
from cirrus_airflow.links import CirrusDashboardLink, CirrusOutputLink
from cirrus_airflow.storage import normalize
from cirrus_airflow.tuning.search import Search, TuneConfig, executors_for
from cirrus_airflow.tuning.space import grid, random_search
from operators.base import CirrusBaseOperator
from operators.triggers import TuneTrigger

STRATEGIES = ("grid", "random")


class CirrusTuneOperator(CirrusBaseOperator):
    """Search hyperparameters: up to ``concurrency`` trainings at once, each with its own
    workers and live evaluator on one shared parameter server, the hopeless ones stopped
    early, within budgets. A retry resumes the search: configurations that ended are not
    run again.

    :param data_uri: the preprocessing output; templated.
    :param output_uri: folder for every configuration's run and ``results.json``; templated.
    :param model: ``lr`` or ``mf``.
    :param search_space: ``grid``: {name: [values]} (the Cartesian product); ``random``:
        {name: "loguniform:LO:HI" | "uniform:LO:HI" | "int:LO:HI" | "choice:A,B"}. Any
        training setting, ``workers`` and ``worker_memory_mb`` included.
    :param strategy: ``grid`` or ``random`` (``samples`` draws, from ``seed``).
    :param base: training settings every configuration shares (``epochs``, ``workers``, ...).
    :param early_stopping: ``asha``, ``median`` or ``none``, on the live held-out loss.
    :param resource: what the rules count: training ``seconds`` or ``examples``.
    :param grace: resource of ASHA's first rung (or before which the median rule waits).
    :param eta: ASHA's reduction factor.
    :param concurrency: configurations running at once.
    :param max_configs: budget: configurations run in all.
    :param budget_worker_seconds: budget: worker-seconds of every configuration together.
    :param budget_dollars: budget: estimated AWS dollars of every configuration together.
    :param deferrable: run the search from Airflow's triggerer instead of a worker slot.

    The search shows live on the dashboard (the "Tuning" view of the Airflow UI, and this
    task's "Tuning dashboard" link); ``report.html`` and PNG plots land beside the results.

    Returns (XCom) a small summary: the best configuration (parameters, held-out loss,
    model URI), the count of configurations by status, worker-seconds, cost and the URI
    of ``results.json`` (which has every configuration).
    """

    template_fields: Sequence[str] = ("data_uri", "output_uri", "serverless_executor", "function_name")
    operator_extra_links = (CirrusOutputLink(), CirrusDashboardLink())

    def __init__(
        self,
        *,
        data_uri: str,
        output_uri: str,
        search_space: dict,
        model: str = "lr",
        strategy: str = "grid",
        samples: int = 10,
        seed: int = 0,
        base: dict | None = None,
        early_stopping: str = "asha",
        resource: str = "seconds",
        grace: float = 5.0,
        eta: float = 3.0,
        concurrency: int = 4,
        max_configs: int | None = None,
        budget_worker_seconds: float | None = None,
        budget_dollars: float | None = None,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.data_uri, self.output_uri, self.model = data_uri, output_uri, model
        self.search_space, self.strategy, self.samples, self.seed = search_space, strategy, samples, seed
        self.base = dict(base or {})
        self.early_stopping, self.resource, self.grace, self.eta = early_stopping, resource, grace, eta
        self.concurrency, self.max_configs = concurrency, max_configs
        self.budget_worker_seconds, self.budget_dollars = budget_worker_seconds, budget_dollars
        self.deferrable = deferrable
        self._config().validate()

    def _config(self) -> TuneConfig:
        configs = (grid(self.search_space) if self.strategy == "grid"
                   else random_search(self.search_space, samples=self.samples, seed=self.seed))
        return TuneConfig(
            data=self.data_uri, output=self.output_uri, configs=configs, model=self.model, base=self.base,
            early_stopping=self.early_stopping, resource=self.resource, grace=self.grace, eta=self.eta,
            concurrency=self.concurrency, max_configs=self.max_configs,
            budget_worker_seconds=self.budget_worker_seconds, budget_dollars=self.budget_dollars,
        )

    def execute(self, context: Any) -> dict:
        hook = self.hook
        config = self._config()
        self._register(context)
        if self.deferrable:
            self.defer(trigger=TuneTrigger.for_run(config, hook.settings, self.aws_conn_id),
                       method_name="execute_complete", timeout=self.execution_timeout or timedelta(days=7))

        def progress(point: dict) -> None:
            self.log.info("%s: held-out loss %.4f at t=%.1fs", point["config"], point["test_loss"], point["t"])

        search = Search(config, storage=hook.get_storage(), executors=executors_for(hook.settings),
                        progress=progress)
        with self._cancellable(search.cancel):
            results = search.run()
        return self._report(results)

    def _register(self, context: Any) -> None:
        """List the search on the dashboard, and show the task's dashboard link now: Airflow
        stores extra links when a task ends, and this one matters while the search runs. A
        registry that cannot be written costs the page, not the search."""
        ti = context["ti"]
        entry = registry.RunEntry(dag_id=ti.dag_id, run_id=ti.run_id, task_id=ti.task_id,
                                  map_index=-1 if ti.map_index is None else ti.map_index,
                                  output=normalize(self.output_uri), aws_conn_id=self.aws_conn_id)
        link = CirrusDashboardLink()
        url = link.get_link(self, ti_key=entry)  # (the entry has the task instance's key fields)
        try:
            storage = CirrusHook(aws_conn_id=registry.registry_conn_id()).get_storage()
            uri = registry.register(storage, registry.registry_uri(), entry)
            ti.xcom_push(key=link.xcom_key, value=url)
        except Exception as exc:  # noqa: BLE001 - storage, connection or XCom: the search runs without its page
            self.log.warning("could not list this search on the dashboard: %s", exc)
            return
        self.log.info("dashboard: %s (registered at %s)", url, uri)

    def execute_complete(self, context: Any, event: dict) -> dict:
        """Resume after the trigger: its event carries the results, or why the search failed."""
        return self._report(self._trigger_result(event, "results", what="the search"))

    def _report(self, results: dict) -> dict:
        summary = small_summary(results)
        self.log.info("search finished: %s; best %s", summary["statuses"], summary["best"])
        return summary


def small_summary(results: dict) -> dict:
    """What goes to XCom: the best configuration and the totals (results.json has the rest)."""
    statuses = dict(Counter(config["status"] for config in results["configs"]))
    best = results["best"]
    return {
        "best": None if best is None else {k: best[k] for k in ("id", "params", "metric", "model_uri")},
        "metric": results["metric"],
        "statuses": statuses,
        "configs": len(results["configs"]),
        "worker_seconds_total": results["worker_seconds_total"],
        "cost_total_usd": results["cost_total_usd"],
        "results_uri": results["results_uri"],
    }
