"""LIBSVM/SVMlight vectors to sparse features: rebase the indices, scale each feature.

The data is already sparse and its features already numbered, so the first pass only
learns how: whether indices start at 0 or 1 (0-based as soon as any row uses index 0,
unless the user says), how many features there are (the largest index, unless the user
gives ``num_features``, beyond which rows are rejected), and per-feature statistics.

Scaling must keep zeros at zero, or the data stops being sparse, so:
``minmax`` divides each feature by its largest absolute value (data in [0, 1] stays as
it is); ``standard`` divides by its standard deviation over all training rows, absent
entries counted as zeros, without centring; ``none`` keeps the values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.formats.text import split_lines
from cirrus_airflow.numeric import NORMALIZERS
from cirrus_airflow.rejects import INDEX_OUT_OF_RANGE
from cirrus_airflow.shards import SparseRows
from cirrus_airflow.transforms.workspace import TRANSFORM, Workspace

INDEX_BASES = ("auto", "0", "1")
MAX_FEATURES = 1 << 28
_SCALE_FILE = f"{TRANSFORM}/feature-scale.npy"
# Rows of the per-feature statistics array that a first-pass task writes.
_COUNT, _SUM, _SUM_SQ, _MAX_ABS = range(4)


@dataclass(frozen=True)
class SparseTransform:
    normalize: str = "minmax"
    index_base: str = "auto"
    num_features: int | None = None
    base: int | None = None  # resolved by fit
    dim: int | None = None
    scale_file: str | None = None
    _scale: np.ndarray | None = field(default=None, compare=False, repr=False)

    kind = "sparse"
    finishes_after_shuffle = False  # its fit decides which rows are kept, or what ids they get

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if str(self.index_base) not in INDEX_BASES:
            raise ValueError(f"index_base must be one of {INDEX_BASES}, got {self.index_base!r}")
        if self.num_features is not None and not 1 <= self.num_features <= MAX_FEATURES:
            raise ValueError(f"num_features must be between 1 and {MAX_FEATURES}, got {self.num_features}")

    @property
    def feature_dim(self) -> int:
        if self.dim is None:
            raise ValueError("the feature dimension is known once the transform is fitted")
        return self.dim

    def parse_max_index(self) -> int | None:
        """The largest index a row may use whatever the base turns out to be (checked while parsing)."""
        if self.num_features is None:
            return None
        return self.num_features - (1 if str(self.index_base) == "0" else 0)

    # -- pass 1 ---------------------------------------------------------------------------------------------

    def summarize(self, rows, train: np.ndarray, workspace: Workspace, key: str) -> dict:
        summary: dict = {
            "min_index": int(rows.indices.min()) if rows.indices.size else None,
            "max_index": int(rows.indices.max()) if rows.indices.size else None,
            "train_rows": int(train.sum()),
            "feature_stats": None,
        }
        if summary["max_index"] is not None:
            entry_train = np.repeat(train, np.diff(rows.indptr))
            idx, val = rows.indices[entry_train], rows.values[entry_train]
            size = summary["max_index"] + 1
            stats = np.zeros((4, size))
            stats[_COUNT] = np.bincount(idx, minlength=size)
            stats[_SUM] = np.bincount(idx, weights=val, minlength=size)
            stats[_SUM_SQ] = np.bincount(idx, weights=val * val, minlength=size)
            np.maximum.at(stats[_MAX_ABS], idx, np.abs(val))
            summary["feature_stats"] = workspace.write_array(workspace.side_uri(key, "features.npy"), stats)
        return summary

    def fit(self, summaries: list[dict], workspace: Workspace) -> SparseTransform:
        lows = [s["min_index"] for s in summaries if s["min_index"] is not None]
        highs = [s["max_index"] for s in summaries if s["max_index"] is not None]
        if str(self.index_base) == "auto":
            base = 0 if lows and min(lows) == 0 else 1
        else:
            base = int(self.index_base)
        dim = self.num_features if self.num_features is not None else max(1, (max(highs) if highs else 0) + 1 - base)
        if dim > MAX_FEATURES:
            raise ValueError(f"the largest feature index is {max(highs)}: more than {MAX_FEATURES} features; "
                             "is this LIBSVM data? Give num_features to reject rows beyond it")
        stats = np.zeros((4, base + dim))
        for s in summaries:
            if s["feature_stats"] is not None:
                part = workspace.read_array(s["feature_stats"])[:, : base + dim]
                stats[:3, : part.shape[1]] += part[:3]
                np.maximum(stats[_MAX_ABS, : part.shape[1]], part[_MAX_ABS], out=stats[_MAX_ABS, : part.shape[1]])
        scale = self._scale_of(stats[:, base:], rows=sum(s["train_rows"] for s in summaries))
        workspace.write_array(workspace.artifact_uri(_SCALE_FILE), scale)
        return replace(self, base=base, dim=dim, scale_file=_SCALE_FILE, _scale=scale)

    def _scale_of(self, stats: np.ndarray, *, rows: int) -> np.ndarray:
        if self.normalize == "none":
            return np.ones(stats.shape[1], dtype=np.float32)
        if self.normalize == "minmax":
            spread = stats[_MAX_ABS]
        else:
            n = max(rows, 1)
            mean = stats[_SUM] / n
            spread = np.sqrt(np.maximum(stats[_SUM_SQ] / n - mean * mean, 0.0))
        return np.where(spread > 0, 1.0 / np.where(spread > 0, spread, 1.0), 1.0).astype(np.float32)

    def load(self, workspace: Workspace) -> SparseTransform:
        if self._scale is not None or self.scale_file is None:
            return self
        return replace(self, _scale=workspace.read_array(workspace.artifact_uri(self.scale_file)))

    # -- pass 2 ---------------------------------------------------------------------------------------------

    def usable(self, block: ParsedBlock, data: bytes, first_line: int):
        """The block's rows this transform can take; a row with an index outside the fitted
        feature space joins the block's rejected rows, with its text from ``data``."""
        rows = block.rows
        outside = self.out_of_range(rows)
        if not outside.any():
            return rows
        lines = split_lines(data)
        which = np.flatnonzero(outside)
        texts = [lines.text(int(n) - first_line) for n in rows.lines[which]]
        block.rejected.add(rows.lines[which], INDEX_OUT_OF_RANGE, texts)
        return rows.take(np.flatnonzero(~outside))

    def out_of_range(self, rows) -> np.ndarray:
        """Rows with an index outside the fitted feature space (rejected, not truncated)."""
        shifted = rows.indices - self.base
        bad_entry = (shifted < 0) | (shifted >= self.feature_dim)
        if not bad_entry.any():
            return np.zeros(len(rows), dtype=bool)
        return np.logical_or.reduceat(np.append(bad_entry, False), rows.indptr[:-1]) & (np.diff(rows.indptr) > 0)

    def apply(self, rows) -> SparseRows:
        if self._scale is None:
            raise ValueError("SparseTransform.apply needs the fitted scale (call fit or load first)")
        indices = rows.indices - self.base
        return SparseRows(
            labels=np.asarray(rows.labels, dtype=np.float32),
            indptr=np.asarray(rows.indptr, dtype=np.int64),
            indices=indices.astype(np.int32),
            values=(rows.values * self._scale[indices]).astype(np.float32),
        )

    def to_json(self) -> dict:
        return {
            "family": "libsvm",
            "normalize": self.normalize,
            "index_base": self.base if self.base is not None else self.index_base,
            "num_features": self.num_features,
            "feature_scale": self.scale_file,
            "layout": {"features": [0, self.dim]},
        }

    @classmethod
    def from_json(cls, doc: dict) -> SparseTransform:
        base = doc.get("index_base", "auto")
        fitted = isinstance(base, int)
        layout = doc.get("layout", {}).get("features")
        return cls(
            normalize=doc["normalize"],
            index_base=str(base),
            num_features=doc.get("num_features"),
            base=base if fitted else None,
            dim=int(layout[1]) if fitted and layout and layout[1] is not None else None,
            scale_file=doc.get("feature_scale"),
        )
