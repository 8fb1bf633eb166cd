"""CirrusTrainOperator: asynchronous SGD on serverless workers against a parameter server."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from cirrus_airflow.hooks import ParameterServerHook
from cirrus_airflow.report import format_table, progress_line
from cirrus_airflow.training import TrainConfig, TrainingError, TrainingJob
from operators.base import CirrusBaseOperator
from operators.triggers import TrainTrigger


class CirrusTrainOperator(CirrusBaseOperator):
    """Train a model on preprocessed shards with W serverless workers.

    The operator starts a parameter server for the run (or uses the one behind
    ``ps_conn_id``), fans out the workers, logs the live training loss, and at the
    end saves the model under ``<output_uri>/model/`` and evaluates it on the test
    shards.

    :param data_uri: the preprocessing output (folder with ``_manifest.json``); templated.
    :param output_uri: folder for ``model/``, ``metrics.jsonl`` and ``summary.json``; templated.
    :param model: ``lr`` (sparse logistic regression, on sparse shards) or ``mf`` (biased
        matrix factorisation, on ratings shards).
    :param workers: number of concurrent workers (W).
    :param learning_rate: step size of the server-side optimizer.
    :param optimizer: the server-side update rule: ``sgd``, ``momentum``, ``nesterov``,
        ``adagrad`` or ``adam``.
    :param l2: L2 regularisation strength, applied on the server to the rows a step
        touches; None takes the model's default (0 for ``lr``, 0.2 for ``mf``).
    :param factors: ``mf``: factors per user and per item (each also has a bias).
    :param minibatch: rows per gradient step.
    :param epochs: passes over the training rows.
    :param time_budget_s: stop after this many seconds whatever the epochs.
    :param target_loss: stop once the live held-out loss (``lr``: log loss; ``mf``: RMSE)
        is at most this.
    :param patience: stop after this many live evaluations in a row without a new best.
    :param eval_interval_s: seconds between live held-out evaluations, each an invocation
        beside the workers (so the executor needs a slot more than ``workers``); None: at
        the end only.
    :param eval_rows: test rows a live evaluation scores (the same ones every time).
    :param checkpoint_interval_s: how often the run's own parameter server checkpoints the
        model under ``<output_uri>/_checkpoint/``. A retry of this task (same output) resumes
        an unfinished attempt from there, each worker from its journal, rather than starting
        over; a finished run is trained afresh.
    :param handover_margin_s: a worker hands over to a fresh invocation this long
        before its Lambda time limit (must exceed one step and one shard read).
    :param ps_conn_id: a ``cirrus_parameter_server`` connection to use an existing server
        (its host may list a sharded group's addresses, comma-separated).
    :param ps_shards: without ``ps_conn_id``, start a parameter server of this many
        processes, keys spread over them.
    :param deferrable: wait in Airflow's triggerer rather than a worker slot: the trigger
        drives the run (and starts its parameter server) and the task resumes to report.

    Returns (XCom) the summary: the held-out metrics (``lr``: log loss, AUC, accuracy;
    ``mf``: RMSE, MAE) beside a constant prediction's, examples per second,
    worker-seconds and the model URI.
    """

    template_fields: Sequence[str] = ("data_uri", "output_uri", "serverless_executor", "function_name")

    def __init__(
        self,
        *,
        data_uri: str,
        output_uri: str,
        model: str = "lr",
        workers: int = 4,
        learning_rate: float = 0.1,
        optimizer: str = "adagrad",
        l2: float | None = None,
        factors: int = 16,
        minibatch: int = 256,
        epochs: int = 2,
        time_budget_s: float | None = None,
        target_loss: float | None = None,
        patience: int | None = None,
        eval_interval_s: float | None = 5.0,
        eval_rows: int = 50_000,
        checkpoint_interval_s: float = 30.0,
        seed: int = 0,
        handover_margin_s: float = 10.0,
        ps_conn_id: str | None = None,
        ps_shards: int = 1,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_uri = data_uri
        self.output_uri = output_uri
        self.model = model
        self.workers = workers
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.l2 = l2
        self.factors = factors
        self.minibatch = minibatch
        self.epochs = epochs
        self.time_budget_s = time_budget_s
        self.target_loss = target_loss
        self.patience = patience
        self.eval_interval_s = eval_interval_s
        self.eval_rows = eval_rows
        self.checkpoint_interval_s = checkpoint_interval_s
        self.seed = seed
        self.handover_margin_s = handover_margin_s
        self.ps_conn_id = ps_conn_id
        self.ps_shards = ps_shards
        self.deferrable = deferrable
        self._config().validate()

    def _config(self, ps_address: str | None = None, ps_token: str | None = None) -> TrainConfig:
        return TrainConfig(
            data=self.data_uri, output=self.output_uri, model=self.model, workers=self.workers,
            learning_rate=self.learning_rate, optimizer=self.optimizer, l2=self.l2, factors=self.factors,
            minibatch=self.minibatch,
            epochs=self.epochs, time_budget_s=self.time_budget_s, target_loss=self.target_loss,
            patience=self.patience, eval_interval_s=self.eval_interval_s, eval_rows=self.eval_rows, seed=self.seed,
            checkpoint_interval_s=self.checkpoint_interval_s,
            handover_margin_s=self.handover_margin_s, ps_address=ps_address, ps_token=ps_token,
            ps_shards=self.ps_shards,
        )

    def execute(self, context: Any) -> dict:
        hook = self.hook
        if self.deferrable:
            self.defer(
                trigger=TrainTrigger.for_run(self._config(), hook.settings, self.aws_conn_id, self.ps_conn_id),
                method_name="execute_complete",
                timeout=self.execution_timeout or timedelta(days=7),
            )
        address, token = ParameterServerHook(self.ps_conn_id).get_conn() if self.ps_conn_id else (None, None)

        def progress(point: dict) -> None:
            self.log.info("%s", progress_line(point))

        with hook.get_executor() as executor:
            job = TrainingJob(self._config(address, token), storage=hook.get_storage(), executor=executor,
                              progress=progress)
            with self._cancellable(job.cancel):
                summary = job.run()
        return self._report(summary)

    def execute_complete(self, context: Any, event: dict) -> dict:
        """Resume after the trigger: its event carries the summary, or why the run failed."""
        return self._report(self._trigger_result(event, "summary", what="training", failed=TrainingError))

    def _report(self, summary: dict) -> dict:
        self.log.info("training finished:\n%s", format_table(summary))
        return summary
