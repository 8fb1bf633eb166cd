"""Held-out metrics that merge across evaluation tasks.

Each evaluation task summarises its shard in a few numbers (and, for a classifier,
two score histograms); the driver adds them up. AUC comes from the histograms (ties
inside a bin count one half), which is within about 1/bins of the exact value and
keeps every result a few kilobytes however large the test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cirrus_airflow.models.logistic import log_loss_terms, sigmoid

AUC_BINS = 4096


@dataclass
class BinaryMetrics:
    count: int
    loss_sum: float
    correct: int
    positives: np.ndarray  # histogram of predicted probabilities of positive rows
    negatives: np.ndarray

    @classmethod
    def empty(cls) -> BinaryMetrics:
        return cls(0, 0.0, 0, np.zeros(AUC_BINS, np.int64), np.zeros(AUC_BINS, np.int64))

    @classmethod
    def of(cls, margins: np.ndarray, labels: np.ndarray) -> BinaryMetrics:
        p = sigmoid(margins)
        y = labels.astype(np.float64)
        bins = np.minimum((p * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        positive = y > 0.5
        return cls(
            count=len(y),
            loss_sum=float(log_loss_terms(margins, y).sum()),
            correct=int(((p >= 0.5) == positive).sum()),
            positives=np.bincount(bins[positive], minlength=AUC_BINS),
            negatives=np.bincount(bins[~positive], minlength=AUC_BINS),
        )

    def merge(self, other: BinaryMetrics) -> BinaryMetrics:
        return BinaryMetrics(
            self.count + other.count,
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            self.positives + other.positives,
            self.negatives + other.negatives,
        )

    @property
    def log_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    @property
    def positive_rate(self) -> float:
        return float(self.positives.sum()) / self.count if self.count else float("nan")

    @property
    def auc(self) -> float:
        pos, neg = self.positives.astype(np.float64), self.negatives.astype(np.float64)
        if pos.sum() == 0 or neg.sum() == 0:
            return float("nan")
        negatives_below = np.cumsum(neg) - neg
        return float((pos * (negatives_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    def to_json(self) -> dict:
        return {
            "count": self.count,
            "loss_sum": self.loss_sum,
            "correct": self.correct,
            "positives": self.positives.tolist(),
            "negatives": self.negatives.tolist(),
        }

    @classmethod
    def from_json(cls, doc: dict) -> BinaryMetrics:
        return cls(
            int(doc["count"]),
            float(doc["loss_sum"]),
            int(doc["correct"]),
            np.asarray(doc["positives"], dtype=np.int64),
            np.asarray(doc["negatives"], dtype=np.int64),
        )

    def summary(self) -> dict:
        return {
            "test_rows": self.count,
            "test_logloss": self.log_loss,
            "test_auc": self.auc,
            "test_accuracy": self.accuracy,
        }


def constant_log_loss(predicted: float, actual: float) -> float:
    """Log loss of always predicting ``predicted`` on labels whose positive rate is
    ``actual``: with the training base rate, the figure a model must beat."""
    p = min(max(predicted, 1e-12), 1 - 1e-12)
    return float(-(actual * np.log(p) + (1 - actual) * np.log(1 - p)))


@dataclass
class RegressionMetrics:
    """Squared and absolute errors of predicted ratings, and the ratings' own moments
    (for the error of always predicting the training mean, the figure to beat)."""

    count: int
    squared_error: float
    absolute_error: float
    total: float
    total_sq: float

    @classmethod
    def empty(cls) -> RegressionMetrics:
        return cls(0, 0.0, 0.0, 0.0, 0.0)

    @classmethod
    def of(cls, predictions: np.ndarray, targets: np.ndarray) -> RegressionMetrics:
        y = np.asarray(targets, dtype=np.float64)
        error = np.asarray(predictions, dtype=np.float64) - y
        return cls(len(y), float(error @ error), float(np.abs(error).sum()), float(y.sum()), float(y @ y))

    def merge(self, other: RegressionMetrics) -> RegressionMetrics:
        return RegressionMetrics(self.count + other.count, self.squared_error + other.squared_error,
                                 self.absolute_error + other.absolute_error, self.total + other.total,
                                 self.total_sq + other.total_sq)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.squared_error / self.count)) if self.count else float("nan")

    @property
    def mae(self) -> float:
        return self.absolute_error / self.count if self.count else float("nan")

    def constant_rmse(self, predicted: float) -> float:
        """RMSE of always predicting ``predicted``: E[(y - c)^2] from the moments."""
        if not self.count:
            return float("nan")
        mean_sq = (self.total_sq - 2 * predicted * self.total) / self.count + predicted * predicted
        return float(np.sqrt(max(mean_sq, 0.0)))

    def to_json(self) -> dict:
        return {"count": self.count, "squared_error": self.squared_error, "absolute_error": self.absolute_error,
                "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_json(cls, doc: dict) -> RegressionMetrics:
        return cls(int(doc["count"]), float(doc["squared_error"]), float(doc["absolute_error"]),
                   float(doc["total"]), float(doc["total_sq"]))

    def summary(self) -> dict:
        return {"test_rows": self.count, "test_rmse": self.rmse, "test_mae": self.mae}
