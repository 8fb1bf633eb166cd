"""Sparse logistic regression on CSR minibatches.

The parameter server holds one weight per feature plus a bias at key
``feature_dim``. A worker pulls only the weights of the keys its minibatch touches
(Cirrus's sparse pull), so gradients are computed over that compact key set and
pushed back as (keys, values); the optimizer and L2 run on the server.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cirrus_airflow.shards import SparseRows


@dataclass
class Minibatch:
    """A CSR minibatch re-indexed onto the unique keys it touches (bias key last)."""

    rows: SparseRows
    keys: np.ndarray  # unique keys, the bias key last: int32 when they fit (half the bytes on the wire)
    local: np.ndarray  # int64 per entry: position of its key in ``keys``
    row_of_entry: np.ndarray  # int64 per entry: its row

    @classmethod
    def of(cls, rows: SparseRows, bias_key: int) -> Minibatch:
        keys, local = np.unique(rows.indices, return_inverse=True)
        keys = np.append(keys, bias_key).astype(np.int32 if bias_key <= np.iinfo(np.int32).max else np.int64)
        return cls(rows=rows, keys=keys, local=local.astype(np.int64), row_of_entry=_row_of_entry(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def margins(self, weights: np.ndarray) -> np.ndarray:
        """x·w + b for every row; ``weights`` is aligned with ``keys``."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        return _margins(self.rows, self.row_of_entry, w[self.local], w[-1])

    def gradient(self, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """Mean log-loss gradient over the minibatch, aligned with ``keys``, and the
        summed loss of the rows before the update (a progressive training loss)."""
        m = self.margins(weights)
        y = self.rows.labels.astype(np.float64)
        residual = sigmoid(m) - y
        n = max(1, len(self.rows))
        grad = np.bincount(
            self.local, weights=residual[self.row_of_entry] * self.rows.values, minlength=len(self.keys)
        )
        grad[-1] = residual.sum()
        return (grad / n).astype(np.float32), float(log_loss_terms(m, y).sum())


def sigmoid(m: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * m))


def log_loss_terms(margins: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row log loss from margins, stable for large |margin|."""
    return np.logaddexp(0.0, margins) - labels * margins


def predict_margins(rows: SparseRows, weights: np.ndarray) -> np.ndarray:
    """Margins of rows under a full weight vector (the bias is its last element)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    return _margins(rows, _row_of_entry(rows), w[rows.indices], w[-1])


def _row_of_entry(rows: SparseRows) -> np.ndarray:
    return np.repeat(np.arange(len(rows), dtype=np.int64), np.diff(rows.indptr))


def _margins(rows: SparseRows, row_of_entry: np.ndarray, entry_weights: np.ndarray, bias: float) -> np.ndarray:
    """x·w + b per row, from the weight of each stored entry: one bincount, no loop."""
    return np.bincount(row_of_entry, weights=entry_weights * rows.values, minlength=len(rows)) + bias
