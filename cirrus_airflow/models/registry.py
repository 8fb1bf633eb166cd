"""The models a run can train, as the driver, the workers and the evaluator see them.

``lr``  sparse logistic regression on hashed features (sparse shards): one weight a
        feature and a bias at key ``feature_dim``; held-out log loss, AUC, accuracy.
``mf``  biased matrix factorisation on ratings (ratings shards): a row of k factors
        and a bias for every user and item; held-out RMSE and MAE.

The driver turns a manifest and the run's settings into a ``ModelPlan`` (the server
table and the small JSON ``params`` every task gets); a worker makes minibatches and
the evaluator metrics from those params alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cirrus_airflow.metrics import BinaryMetrics, RegressionMetrics
from cirrus_airflow.models.factorization import FactorBatch, FactorModel
from cirrus_airflow.models.logistic import Minibatch, predict_margins
from cirrus_airflow.shards import Manifest, RatingRows, SparseRows

MODELS = ("lr", "mf")
_SHARD_KINDS = {"lr": "sparse", "mf": "ratings"}
# Factors start small and random (zeros would never move: each one's gradient is the other's value).
MF_INIT_SCALE = 0.1
# L2 of a run that does not set it: ratings overfit within a few epochs without it.
DEFAULT_L2 = {"lr": 0.0, "mf": 0.2}

Metrics = BinaryMetrics | RegressionMetrics


@dataclass(frozen=True)
class ModelPlan:
    """A model's table on the parameter server and the parameters every task gets."""

    model: str
    size: int
    width: int
    initializer: str
    init_scale: float
    params: dict

    def table_options(self) -> dict:
        return {"size": self.size, "width": self.width, "initializer": self.initializer,
                "init_scale": self.init_scale}


def plan(model: str, manifest: Manifest, *, factors: int, seed: int = 0) -> ModelPlan:
    """The plan for training ``model`` on shards described by ``manifest``."""
    check_model(model)
    if manifest.kind != _SHARD_KINDS[model]:
        raise ValueError(f"model {model!r} trains on {_SHARD_KINDS[model]} shards, and these are {manifest.kind!r}: "
                         f"preprocess with {'--format ratings' if model == 'mf' else 'a sparse format'} "
                         f"or choose model {'mf' if manifest.kind == 'ratings' else 'lr'}")
    if model == "lr":
        return ModelPlan(model, manifest.feature_dim + 1, 1, "zeros", 0.01, {"bias_key": manifest.feature_dim})
    transform = manifest.transform
    stats = transform.get("rating_stats") or {}
    params = {"num_users": int(transform["num_users"]), "num_items": int(transform["num_items"]),
              "factors": int(factors), "mean": float(transform["mean_rating"]),
              "low": stats.get("min"), "high": stats.get("max")}
    return ModelPlan(model, params["num_users"] + params["num_items"], factors + 1, "normal", MF_INIT_SCALE, params)


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def minibatch(model: str, params: dict, rows: SparseRows | RatingRows) -> Minibatch | FactorBatch:
    """Rows as a minibatch: ``keys`` to pull, ``gradient(weights)`` to push, ``len``."""
    if model == "lr":
        return Minibatch.of(_expect(rows, SparseRows, model), int(params["bias_key"]))
    return FactorBatch.of(_expect(rows, RatingRows, model), factor_model(params))


def empty_metrics(model: str) -> Metrics:
    check_model(model)
    return BinaryMetrics.empty() if model == "lr" else RegressionMetrics.empty()


def metrics_from_json(model: str, doc: dict) -> Metrics:
    check_model(model)
    return BinaryMetrics.from_json(doc) if model == "lr" else RegressionMetrics.from_json(doc)


def score_batch(batch: Minibatch | FactorBatch, weights: np.ndarray) -> Metrics:
    """Held-out metrics of a minibatch's rows under the weights of its keys (a sparse pull
    from the live model: an evaluation while training goes on)."""
    if isinstance(batch, Minibatch):
        return BinaryMetrics.of(batch.margins(weights), batch.rows.labels)
    return RegressionMetrics.of(batch.model.clip(batch.predictions(weights)), batch.rows.ratings)


def held_out_loss(metrics: Metrics) -> float:
    """The one figure a run stops on and a search ranks by: log loss, or RMSE for ratings."""
    return metrics.log_loss if isinstance(metrics, BinaryMetrics) else metrics.rmse


def score(model: str, params: dict, rows: SparseRows | RatingRows, table: np.ndarray) -> Metrics:
    """Held-out metrics of rows under a whole table (as saved, or pulled from the server)."""
    if model == "lr":
        return BinaryMetrics.of(predict_margins(_expect(rows, SparseRows, model), table), rows.labels)
    rows = _expect(rows, RatingRows, model)
    fm = factor_model(params)
    return RegressionMetrics.of(fm.predict(rows.users, rows.items, table.reshape(fm.size, fm.width)), rows.ratings)


def factor_model(params: dict) -> FactorModel:
    return FactorModel(num_users=int(params["num_users"]), num_items=int(params["num_items"]),
                       factors=int(params["factors"]), mean=float(params["mean"]), low=params.get("low"),
                       high=params.get("high"))


def _expect(rows: object, kind: type, model: str) -> object:
    if not isinstance(rows, kind):
        raise ValueError(f"model {model!r} takes {kind.__name__}, got {type(rows).__name__}: wrong shards for it")
    return rows
