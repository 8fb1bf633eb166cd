"""Tabular click data (Criteo, or CSV/Parquet with a given schema) to sparse features.

A row has a 0/1 label, numeric columns and categorical columns (already hashed per
column by the parser). The feature layout, recorded in the manifest:

    [0, k)                     the k numeric columns: log(1+x) if asked, then scaled
    [k, 2k)                    one indicator per numeric column, 1 where it is missing
                               (only with ``missing="indicator"``; ``"impute"`` puts the
                               column's training mean in its place instead)
    [offset, offset + 2**bits) categorical values and pairwise crosses, hashed with a seed

With ``signed_hash`` a hashed feature's value is +1 or -1 by another bit of its hash,
so collisions cancel on average instead of adding up (Weinberger et al. 2009). With
``min_count`` > 1, a bucket seen fewer times than that in the training rows is folded
into its column's "rare" bucket: the counts come from the first pass and the mask of
frequent buckets is saved under ``transform/`` for prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from cirrus_airflow import hashing
from cirrus_airflow.numeric import NORMALIZERS, ColumnStats, log_counts, normalize
from cirrus_airflow.shards import SparseRows
from cirrus_airflow.transforms.workspace import TRANSFORM, Workspace

MISSING_MODES = ("indicator", "impute")
MAX_HASH_BITS = 26
_CROSS_SALT = 1 << 20
_RARE_SALT = 2 << 20
_FREQUENT_FILE = f"{TRANSFORM}/frequent-buckets.npy"


@dataclass
class TabularRows:
    """Parsed, valid rows; categorical values are column-seeded 64-bit hashes."""

    labels: np.ndarray  # float32 (n,)
    numeric: np.ndarray  # float64 (n, k), NaN where missing
    categorical: np.ndarray  # uint64 (n, m)
    lines: np.ndarray  # int64 (n,), 1-based line (or row) numbers in the source
    hashes: np.ndarray  # uint64 (n,), identity of each row's content

    def __len__(self) -> int:
        return len(self.labels)

    def row_hash(self) -> np.ndarray:
        return self.hashes


@dataclass(frozen=True)
class TabularTransform:
    """The transformation, with its parameters and (once fitted) the training statistics."""

    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    hash_bits: int = 18
    hash_seed: int = 0
    log_transform: bool = True
    normalize: str = "minmax"
    missing: str = "indicator"
    signed_hash: bool = False
    crosses: tuple[tuple[str, str], ...] = ()
    min_count: int = 1
    stats: ColumnStats | None = None
    frequent_file: str | None = None
    _frequent: np.ndarray | None = field(default=None, compare=False, repr=False)

    kind = "sparse"
    # Its fitted part (scaling, rare buckets) is a cheap pass over fixed-width rows, so the
    # driver scatters ``features`` in pass 1 and calls ``finish`` as shards are combined.
    finishes_after_shuffle = True

    def __post_init__(self) -> None:
        if not 1 <= self.hash_bits <= MAX_HASH_BITS:
            raise ValueError(
                f"hash_bits must be between 1 and {MAX_HASH_BITS} (2**bits features, each a weight and "
                f"optimizer state on the parameter server), got {self.hash_bits}"
            )
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if self.missing not in MISSING_MODES:
            raise ValueError(f"missing must be one of {MISSING_MODES}, got {self.missing!r}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be at least 1, got {self.min_count}")
        known = set(self.categorical_columns)
        for pair in self.crosses:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"a cross is a pair of two different categorical columns, got {pair!r}")
            unknown = [c for c in pair if c not in known]
            if unknown:
                raise ValueError(
                    f"cannot cross {pair[0]!r} with {pair[1]!r}: {', '.join(map(repr, unknown))} is not a "
                    f"categorical column (they are {', '.join(self.categorical_columns)})"
                )

    # -- layout ---------------------------------------------------------------------------------------------

    @property
    def numeric_width(self) -> int:
        k = len(self.numeric_columns)
        return 2 * k if self.missing == "indicator" else k

    @property
    def feature_dim(self) -> int:
        return self.numeric_width + (1 << self.hash_bits)

    # -- pass 1 ---------------------------------------------------------------------------------------------

    def summarize(self, rows: TabularRows, train: np.ndarray, workspace: Workspace, key: str) -> dict:
        """Numeric statistics of the training rows and, for ``min_count``, their bucket counts."""
        numeric = self._numeric_view(rows.numeric[train]).astype(np.float64)
        summary: dict = {"numeric": ColumnStats.of(numeric).to_json()}
        if self.min_count > 1:
            buckets = self._buckets(rows.categorical[train]).ravel()
            counts = np.bincount(buckets, minlength=1 << self.hash_bits).astype(np.uint32)
            summary["bucket_counts"] = workspace.write_array(workspace.side_uri(key, "counts.npy"), counts)
        return summary

    def fit(self, summaries: list[dict], workspace: Workspace) -> TabularTransform:
        stats = ColumnStats.from_json(summaries[0]["numeric"])
        for s in summaries[1:]:
            stats = stats.merge(ColumnStats.from_json(s["numeric"]))
        if self.min_count == 1:
            return replace(self, stats=stats)
        counts = np.zeros(1 << self.hash_bits, dtype=np.uint64)
        for s in summaries:
            counts += workspace.read_array(s["bucket_counts"])
        frequent = counts >= self.min_count
        workspace.write_array(workspace.artifact_uri(_FREQUENT_FILE), np.packbits(frequent))
        return replace(self, stats=stats, frequent_file=_FREQUENT_FILE, _frequent=frequent)

    def load(self, workspace: Workspace) -> TabularTransform:
        """The transform with its artifacts in memory, ready for ``apply``."""
        if self.frequent_file is None or self._frequent is not None:
            return self
        packed = workspace.read_array(workspace.artifact_uri(self.frequent_file))
        return replace(self, _frequent=np.unpackbits(packed, count=1 << self.hash_bits).astype(bool))

    def usable(self, block, data: bytes, first_line: int) -> TabularRows:
        """The rows it can take: every parsed row (the parser has set the bad ones aside)."""
        return block.rows

    # -- after the fit: features before the shuffle, the fitted part after it ---------------------------------

    def apply(self, rows: TabularRows) -> SparseRows:
        """The rows' final features (for prediction; preprocessing runs the two halves apart)."""
        return self.finish(self.features(rows))

    def features(self, rows: TabularRows) -> SparseRows:
        """The features that need no statistics, so pass 1 can scatter them as it counts.

        Every row has one entry per numeric column and one per hashed column, so the CSR
        arrays are fixed-width (n, width) arrays built in place. Numeric entries hold the
        (logged) values unscaled, NaN where missing, at indices [0, k); hashed entries are
        final but for the ``min_count`` fold. ``finish`` does the rest.
        """
        n, k = len(rows), len(self.numeric_columns)
        hashed = self._hashed_columns(rows.categorical)
        width = k + hashed.shape[1]
        indices = np.empty((n, width), dtype=np.int32)
        values = np.ones((n, width), dtype=np.float32)
        indices[:, :k] = np.arange(k, dtype=np.int32)
        values[:, :k] = self._numeric_view(rows.numeric)
        buckets = indices[:, k:]
        np.bitwise_and(hashed, np.uint64((1 << self.hash_bits) - 1), out=buckets, casting="unsafe")
        buckets += self.numeric_width
        if self.signed_hash:
            values[:, k:] = self._signs(hashed)
        return SparseRows(
            labels=np.asarray(rows.labels, dtype=np.float32),
            indptr=np.arange(0, width * n + 1, width, dtype=np.int64),
            indices=indices.reshape(-1),
            values=values.reshape(-1),
        )

    def finish(self, rows: SparseRows) -> SparseRows:
        """Rows made by ``features`` (in any order, joined from any blocks) with the fitted
        statistics applied: numeric values scaled, a missing value as its indicator (the
        row's entries stay in index order) or as the training mean, rare buckets folded.
        The rows' arrays are reused: ``rows`` is consumed."""
        if self.stats is None:
            raise ValueError("TabularTransform.finish needs the statistics of the first pass (call fit first)")
        if self.min_count > 1 and self._frequent is None:
            raise ValueError("TabularTransform.finish needs the frequent-bucket mask (call load first)")
        n, k = len(rows), len(self.numeric_columns)
        width = k + len(self.categorical_columns) + len(self.crosses)
        if len(rows.indices) != n * width:
            raise ValueError(f"finish takes the rows made by features ({width} entries a row), got "
                             f"{len(rows.indices)} entries for {n} rows")
        indices, values = rows.indices.reshape(n, width), rows.values.reshape(n, width)
        numeric = normalize(values[:, :k].astype(np.float64), self.stats, self.normalize)
        missing = np.isnan(numeric)
        if self.missing == "indicator":
            used = np.concatenate([~missing, missing], axis=1)  # per row, k of the 2k slots, in order
            indices[:, :k] = np.broadcast_to(np.arange(2 * k, dtype=np.int32), used.shape)[used].reshape(n, k)
            slot_values = np.ones(used.shape, dtype=np.float32)
            slot_values[:, :k] = numeric
            values[:, :k] = slot_values[used].reshape(n, k)
        else:
            means = normalize(self.stats.mean[None, :], self.stats, self.normalize)[0]
            values[:, :k] = np.where(missing, means, numeric)
        if self._frequent is not None:
            buckets = indices[:, k:] - self.numeric_width
            rare = np.asarray(self._rare_buckets(), dtype=np.int32)
            indices[:, k:] = np.where(self._frequent[buckets], buckets, rare[None, :]) + self.numeric_width
        return rows

    # -- shared ---------------------------------------------------------------------------------------------

    def _numeric_view(self, numeric: np.ndarray) -> np.ndarray:
        """The numeric values as the rows carry them before scaling: logged if asked, in float32.
        The statistics are taken on these very values, so a training value scales into [0, 1]."""
        return (log_counts(numeric) if self.log_transform else numeric).astype(np.float32)

    def _hashed_columns(self, categorical: np.ndarray) -> np.ndarray:
        """The categorical hashes, then one column per cross (a hash of the pair)."""
        if not self.crosses:
            return categorical
        position = {name: j for j, name in enumerate(self.categorical_columns)}
        crossed = [
            hashing.fmix64(
                hashing.combine_columns([categorical[:, position[a]], categorical[:, position[b]]])
                ^ np.uint64(hashing.derive_seed(self.hash_seed, _CROSS_SALT + c))
            )
            for c, (a, b) in enumerate(self.crosses)
        ]
        return np.column_stack([categorical, *crossed])

    def _buckets(self, categorical: np.ndarray) -> np.ndarray:
        """Bucket of every hashed value: its low bits."""
        return (self._hashed_columns(categorical) & np.uint64((1 << self.hash_bits) - 1)).astype(np.int64)

    @staticmethod
    def _signs(hashed: np.ndarray) -> np.ndarray:
        """With ``signed_hash``, a value's sign is the top bit of its hash, independent of its bucket."""
        return np.where(hashed >> np.uint64(63), np.float32(1.0), np.float32(-1.0))

    def _rare_buckets(self) -> list[int]:
        columns = len(self.categorical_columns) + len(self.crosses)
        return [hashing.derive_seed(self.hash_seed, _RARE_SALT + j) & ((1 << self.hash_bits) - 1)
                for j in range(columns)]

    # -- manifest -------------------------------------------------------------------------------------------

    def to_json(self) -> dict:
        k = len(self.numeric_columns)
        return {
            "family": "tabular",
            "numeric_columns": list(self.numeric_columns),
            "categorical_columns": list(self.categorical_columns),
            "hash_bits": self.hash_bits,
            "hash_seed": self.hash_seed,
            "hash": "cirrus-fmix64-words (cirrus_airflow.hashing)",
            "log_transform": self.log_transform,
            "normalize": self.normalize,
            "missing": self.missing,
            "signed_hash": self.signed_hash,
            "crosses": [list(pair) for pair in self.crosses],
            "min_count": self.min_count,
            "frequent_buckets": self.frequent_file,
            "numeric_stats": None if self.stats is None else self.stats.to_json(),
            "layout": {
                "numeric": [0, k],
                "missing_indicators": [k, 2 * k] if self.missing == "indicator" else None,
                "hashed": [self.numeric_width, self.feature_dim],
            },
        }

    @classmethod
    def from_json(cls, doc: dict) -> TabularTransform:
        stats = doc.get("numeric_stats")
        return cls(
            numeric_columns=tuple(doc["numeric_columns"]),
            categorical_columns=tuple(doc["categorical_columns"]),
            hash_bits=int(doc["hash_bits"]),
            hash_seed=int(doc["hash_seed"]),
            log_transform=bool(doc["log_transform"]),
            normalize=doc["normalize"],
            missing=doc.get("missing", "indicator"),
            signed_hash=bool(doc.get("signed_hash", False)),
            crosses=tuple(tuple(pair) for pair in doc.get("crosses", ())),
            min_count=int(doc.get("min_count", 1)),
            stats=None if stats is None else ColumnStats.from_json(stats),
            frequent_file=doc.get("frequent_buckets"),
        )
