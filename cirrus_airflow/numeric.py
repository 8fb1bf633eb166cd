"""Column statistics for numeric features, computed by a map over splits and merged.

Preprocessing is two passes (Cirrus's design): every worker summarises its split,
the driver merges the summaries, and a second fan-out scales every value with the
merged figures. The summary is a handful of numbers per column, so it travels in
the Lambda event and result and is recorded in the manifest for prediction time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMALIZERS = ("minmax", "standard", "none")


def log_counts(x: np.ndarray) -> np.ndarray:
    """sign(x) * log(1 + |x|): tames heavy-tailed counts and keeps negatives apart.

    log1p is by far the slowest step, and counts are mostly small integers: theirs are
    looked up in a table made by the same np.log1p, so every value is the same to the
    bit; only the other values are computed. (NaN looks up log1p(0), and sign(NaN)
    makes the product NaN, as before.)
    """
    x = np.asarray(x)
    if x.dtype != np.float64:
        return np.sign(x) * np.log1p(np.abs(x))
    magnitude = np.abs(x)
    small = magnitude < len(_LOG1P)  # False for NaN
    index = np.where(small, magnitude, 0.0).astype(np.intp)
    logged = _LOG1P[index]
    other = ~((small & (index == magnitude)) | np.isnan(magnitude))
    if other.any():
        logged[other] = np.log1p(magnitude[other])
    return np.sign(x) * logged


# log1p of 0, 1, ..., 65535 (see log_counts).
_LOG1P = np.log1p(np.arange(1 << 16, dtype=np.float64))


@dataclass
class ColumnStats:
    """Per-column count, missing count, min, max, sum and sum of squares."""

    count: np.ndarray
    missing: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> ColumnStats:
        """Statistics of a (rows, columns) float matrix whose NaNs are missing values."""
        present = ~np.isnan(x)
        filled = np.where(present, x, 0.0)
        count = present.sum(axis=0).astype(np.int64)
        with np.errstate(invalid="ignore"):
            minimum = np.where(count > 0, np.where(present, x, np.inf).min(axis=0, initial=np.inf), np.nan)
            maximum = np.where(count > 0, np.where(present, x, -np.inf).max(axis=0, initial=-np.inf), np.nan)
        return cls(
            count=count,
            missing=(x.shape[0] - count).astype(np.int64),
            minimum=minimum,
            maximum=maximum,
            total=filled.sum(axis=0),
            total_sq=(filled * filled).sum(axis=0),
        )

    def merge(self, other: ColumnStats) -> ColumnStats:
        return ColumnStats(
            count=self.count + other.count,
            missing=self.missing + other.missing,
            minimum=np.fmin(self.minimum, other.minimum),
            maximum=np.fmax(self.maximum, other.maximum),
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
        )

    @property
    def mean(self) -> np.ndarray:
        return np.divide(self.total, self.count, out=np.zeros_like(self.total), where=self.count > 0)

    @property
    def std(self) -> np.ndarray:
        var = np.divide(self.total_sq, self.count, out=np.zeros_like(self.total), where=self.count > 0)
        return np.sqrt(np.maximum(var - self.mean**2, 0.0))

    def to_json(self) -> dict:
        def floats(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "count": [int(v) for v in self.count],
            "missing": [int(v) for v in self.missing],
            "min": floats(self.minimum),
            "max": floats(self.maximum),
            "sum": floats(self.total),
            "sum_sq": floats(self.total_sq),
        }

    @classmethod
    def from_json(cls, doc: dict) -> ColumnStats:
        def floats(key: str) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in doc[key]], dtype=np.float64)

        return cls(
            count=np.array(doc["count"], dtype=np.int64),
            missing=np.array(doc["missing"], dtype=np.int64),
            minimum=floats("min"),
            maximum=floats("max"),
            total=floats("sum"),
            total_sq=floats("sum_sq"),
        )


def normalize(x: np.ndarray, stats: ColumnStats, method: str) -> np.ndarray:
    """Scale columns with merged statistics; constant or empty columns become 0."""
    if method == "none":
        return x
    if method == "minmax":
        offset, spread = stats.minimum, stats.maximum - stats.minimum
    elif method == "standard":
        offset, spread = stats.mean, stats.std
    else:
        raise ValueError(f"normalize must be one of {NORMALIZERS}, got {method!r}")
    usable = np.isfinite(spread) & (spread > 0)
    safe_spread = np.where(usable, spread, 1.0)
    safe_offset = np.where(np.isfinite(offset), offset, 0.0)
    scaled = (x - safe_offset) / safe_spread
    return np.where(usable, scaled, np.where(np.isnan(x), np.nan, 0.0))
