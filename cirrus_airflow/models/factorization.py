"""Biased matrix factorisation on minibatches of ratings.

    r̂(u, i) = μ + b_u + b_i + p_u · q_i

The parameter server holds one table of ``num_users + num_items`` rows (users first,
then items, as the preprocessing manifest lays out the ids) by ``k + 1`` columns: the
k factors, then the bias. μ, the mean training rating, is fixed by the manifest. A
worker pulls only the rows its minibatch touches and pushes their summed gradients of
the squared error; L2 runs on the server, on the rows a push touches.

The gradient is a sum over the minibatch rather than a mean: a row's update then
depends on how many of its ratings the minibatch holds, not on the minibatch size,
which keeps the learning rate and L2 of classic SGD matrix factorisation meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cirrus_airflow.shards import RatingRows


@dataclass(frozen=True)
class FactorModel:
    """What a factor table means: its layout and the constants of a prediction."""

    num_users: int
    num_items: int
    factors: int
    mean: float
    low: float | None = None  # predictions are clipped to the training ratings' range
    high: float | None = None

    @property
    def size(self) -> int:
        return self.num_users + self.num_items

    @property
    def width(self) -> int:
        return self.factors + 1

    def predict(self, users: np.ndarray, items: np.ndarray, table: np.ndarray) -> np.ndarray:
        """Predicted ratings of (user, item) index pairs under a whole factor table."""
        u, i = table[users], table[self.num_users + np.asarray(items, dtype=np.int64)]
        return self.clip(self.mean + _dot_plus_biases(u, i))

    def clip(self, r: np.ndarray) -> np.ndarray:
        if self.low is None or self.high is None:
            return r
        return np.clip(r, self.low, self.high)


@dataclass
class FactorBatch:
    """A minibatch of ratings re-indexed onto the table rows it touches."""

    rows: RatingRows
    model: FactorModel
    keys: np.ndarray  # int64 unique table rows: its users', then its items'
    user_rows: np.ndarray  # int64 per rating: its user's position in ``keys``
    item_rows: np.ndarray  # int64 per rating: its item's position in ``keys``

    @classmethod
    def of(cls, rows: RatingRows, model: FactorModel) -> FactorBatch:
        users, user_rows = np.unique(rows.users, return_inverse=True)
        items, item_rows = np.unique(rows.items, return_inverse=True)
        keys = np.concatenate([users.astype(np.int64), model.num_users + items.astype(np.int64)])
        return cls(rows, model, keys, user_rows.astype(np.int64), len(users) + item_rows.astype(np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def predictions(self, weights: np.ndarray) -> np.ndarray:
        """Unclipped predictions (the squared error is of these); ``weights`` is aligned with ``keys``."""
        w = np.asarray(weights, dtype=np.float64).reshape(len(self.keys), self.model.width)
        return self.model.mean + _dot_plus_biases(w[self.user_rows], w[self.item_rows])

    def gradient(self, weights: np.ndarray) -> tuple[np.ndarray, float]:
        """The summed gradient of ½·(r̂ - r)² over the minibatch, aligned with ``keys``, and
        the summed squared error of the ratings before the update (a progressive loss)."""
        w = np.asarray(weights, dtype=np.float64).reshape(len(self.keys), self.model.width)
        u, i = w[self.user_rows], w[self.item_rows]
        error = self.model.mean + _dot_plus_biases(u, i) - self.rows.ratings
        k = self.model.factors
        per_rating = np.empty((2 * len(error), k + 1))
        per_rating[: len(error), :k] = error[:, None] * i[:, :k]  # d/dp_u
        per_rating[len(error):, :k] = error[:, None] * u[:, :k]  # d/dq_i
        per_rating[:, k] = np.concatenate([error, error])  # d/db_u, d/db_i
        grad = np.zeros_like(w)
        np.add.at(grad, np.concatenate([self.user_rows, self.item_rows]), per_rating)
        return grad.astype(np.float32), float(error @ error)


def _dot_plus_biases(u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """p_u·q_i + b_u + b_i for rows laid out as [factors..., bias]."""
    return np.einsum("nk,nk->n", u[:, :-1], i[:, :-1]) + u[:, -1] + i[:, -1]
