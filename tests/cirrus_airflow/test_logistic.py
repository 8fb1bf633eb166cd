import numpy as np
import pytest

from cirrus_airflow.metrics import AUC_BINS, BinaryMetrics, constant_log_loss
from cirrus_airflow.models.logistic import Minibatch, predict_margins
from cirrus_airflow.shards import SparseRows


def _batch(seed=0, n=64, dim=50):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    rows = SparseRows(rng.integers(0, 2, n).astype(np.float32), indptr,
                      rng.integers(0, dim, indptr[-1]).astype(np.int32),  # duplicates inside rows too
                      rng.normal(size=indptr[-1]).astype(np.float32))
    return rows, dim


def _dense(rows: SparseRows, dim: int) -> np.ndarray:
    x = np.zeros((len(rows), dim + 1))
    for i in range(len(rows)):
        for j in range(rows.indptr[i], rows.indptr[i + 1]):
            x[i, rows.indices[j]] += rows.values[j]
    x[:, dim] = 1.0
    return x


def test_gradient_and_loss_match_a_dense_reference():
    rows, dim = _batch()
    w_full = np.random.default_rng(1).normal(size=dim + 1)
    batch = Minibatch.of(rows, bias_key=dim)
    assert batch.keys[-1] == dim and len(np.unique(batch.keys)) == len(batch.keys)
    grad, loss_sum = batch.gradient(w_full[batch.keys])
    x = _dense(rows, dim)
    p = 1 / (1 + np.exp(-(x @ w_full)))
    y = rows.labels
    want_grad = x.T @ (p - y) / len(y)
    want_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum()
    np.testing.assert_allclose(grad, want_grad[batch.keys], rtol=1e-5, atol=1e-7)
    assert loss_sum == pytest.approx(want_loss)
    np.testing.assert_allclose(predict_margins(rows, w_full), x @ w_full)


def test_loss_is_stable_for_huge_margins():
    rows = SparseRows(np.array([1.0, 0.0], np.float32), np.array([0, 1, 2]), np.array([0, 0], np.int32),
                      np.array([1.0, 1.0], np.float32))
    batch = Minibatch.of(rows, bias_key=1)
    grad, loss = batch.gradient(np.array([1e4, 0.0]))
    assert np.isfinite(grad).all() and loss == pytest.approx(1e4)


def test_histogram_auc_is_close_to_the_exact_rank_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 20_000).astype(np.float32)
    margins = rng.normal(size=len(y)) + 1.2 * y
    halves = BinaryMetrics.of(margins[:7000], y[:7000]).merge(BinaryMetrics.of(margins[7000:], y[7000:]))
    order = np.argsort(margins)
    ranks = np.empty(len(y))
    ranks[order] = np.arange(1, len(y) + 1)
    pos = y > 0.5
    exact = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    assert halves.auc == pytest.approx(exact, abs=2.0 / AUC_BINS)
    assert halves.count == len(y)
    p = 1 / (1 + np.exp(-margins))
    assert halves.log_loss == pytest.approx(float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()))
    assert halves.accuracy == pytest.approx(float(((p >= 0.5) == pos).mean()))
    assert BinaryMetrics.from_json(halves.to_json()).auc == halves.auc


def test_constant_log_loss_is_the_entropy_at_the_base_rate():
    assert constant_log_loss(0.5, 0.5) == pytest.approx(np.log(2))
    assert constant_log_loss(0.25, 0.25) < constant_log_loss(0.5, 0.25)
