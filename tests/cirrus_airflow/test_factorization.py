"""Matrix factorisation maths: gradients against finite differences, predictions, metrics."""

import numpy as np
import pytest

from cirrus_airflow.metrics import RegressionMetrics
from cirrus_airflow.models import registry
from cirrus_airflow.models.factorization import FactorBatch, FactorModel
from cirrus_airflow.models.logistic import Minibatch
from cirrus_airflow.shards import Manifest, RatingRows, SparseRows

MODEL = FactorModel(num_users=7, num_items=5, factors=3, mean=3.2, low=0.5, high=5.0)


def _ratings(n=40, seed=0) -> RatingRows:
    rng = np.random.default_rng(seed)  # repeated users and items, as in any real minibatch
    return RatingRows(rng.integers(0, MODEL.num_users, n).astype(np.int32),
                      rng.integers(0, MODEL.num_items, n).astype(np.int32),
                      rng.choice([1.0, 2.5, 3.0, 4.5, 5.0], n).astype(np.float32))


def _loss(batch, weights) -> float:
    """½ Σ (r̂ - r)², the loss whose gradient the batch returns."""
    error = batch.predictions(weights) - batch.rows.ratings
    return 0.5 * float(error @ error)


def _finite_differences(loss, w: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(w)
    for index in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[index] += eps
        down[index] -= eps
        grad[index] = (loss(up) - loss(down)) / (2 * eps)
    return grad


def test_factor_gradient_matches_finite_differences():
    batch = FactorBatch.of(_ratings(), MODEL)
    w = np.random.default_rng(1).normal(0, 0.5, (len(batch.keys), MODEL.width))
    grad, squared = batch.gradient(w)
    np.testing.assert_allclose(grad, _finite_differences(lambda v: _loss(batch, v), w), rtol=1e-4, atol=1e-4)
    assert squared == pytest.approx(2 * _loss(batch, w))


def test_logistic_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    indptr = np.concatenate([[0], np.cumsum(rng.integers(1, 5, 30))])
    rows = SparseRows(rng.integers(0, 2, 30).astype(np.float32), indptr,
                      rng.integers(0, 12, indptr[-1]).astype(np.int32), rng.normal(size=indptr[-1]).astype(np.float32))
    batch = Minibatch.of(rows, bias_key=12)
    w = rng.normal(0, 0.5, len(batch.keys))

    def mean_log_loss(v):
        return batch.gradient(v)[1] / len(rows)

    grad, _ = batch.gradient(w)
    np.testing.assert_allclose(grad, _finite_differences(mean_log_loss, w), rtol=1e-4, atol=1e-5)


def test_batch_keys_are_user_rows_then_item_rows_of_one_table():
    rows = RatingRows(np.array([3, 1, 3], np.int32), np.array([0, 4, 4], np.int32), np.ones(3, np.float32))
    batch = FactorBatch.of(rows, MODEL)
    assert batch.keys.tolist() == [1, 3, 7 + 0, 7 + 4]
    assert batch.keys[batch.user_rows].tolist() == [3, 1, 3]
    assert (batch.keys[batch.item_rows] - 7).tolist() == [0, 4, 4]


def test_predictions_use_the_whole_table_and_are_clipped_to_the_rating_range():
    table = np.zeros((MODEL.size, MODEL.width))
    table[2, :3], table[7 + 1, :3] = [1.0, 2.0, 0.0], [0.5, 0.5, 9.0]  # p·q = 1.5
    table[2, 3], table[7 + 1, 3] = 0.1, -0.2
    assert MODEL.predict(np.array([2]), np.array([1]), table)[0] == pytest.approx(3.2 + 1.5 + 0.1 - 0.2)
    table[2, 3] = 10.0
    assert MODEL.predict(np.array([2]), np.array([1]), table)[0] == 5.0


def test_regression_metrics_merge_and_baseline_match_numpy():
    rng = np.random.default_rng(3)
    y, p = rng.uniform(1, 5, 1000), rng.uniform(1, 5, 1000)
    merged = RegressionMetrics.of(p[:300], y[:300]).merge(RegressionMetrics.from_json(
        RegressionMetrics.of(p[300:], y[300:]).to_json()))
    assert merged.rmse == pytest.approx(np.sqrt(np.mean((p - y) ** 2)))
    assert merged.mae == pytest.approx(np.mean(np.abs(p - y)))
    assert merged.constant_rmse(3.1) == pytest.approx(np.sqrt(np.mean((3.1 - y) ** 2)))


def _manifest(kind: str) -> Manifest:
    transform = {"num_users": 7, "num_items": 5, "mean_rating": 3.2, "rating_stats": {"min": 0.5, "max": 5.0}}
    return Manifest(kind=kind, feature_dim=12, shards={}, transform=transform, split={}, counts={})


def test_a_plan_fits_the_model_to_its_shards_or_says_what_to_do():
    mf = registry.plan("mf", _manifest("ratings"), factors=3)
    assert (mf.size, mf.width, mf.initializer) == (12, 4, "normal") and mf.params["mean"] == 3.2
    lr = registry.plan("lr", _manifest("sparse"), factors=3)
    assert (lr.size, lr.width, lr.params) == (13, 1, {"bias_key": 12})
    with pytest.raises(ValueError, match="model 'mf' trains on ratings shards.*--format ratings"):
        registry.plan("mf", _manifest("sparse"), factors=3)
    with pytest.raises(ValueError, match="model must be one of"):
        registry.plan("svm", _manifest("sparse"), factors=3)
