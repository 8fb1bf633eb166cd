"""Ratings (user, item, rating) to dense indices for matrix factorisation.

Users and items keep whatever ids the source uses (numbers, e-mail hashes, ASINs);
the model needs rows of two embedding tables. The first pass lists the distinct ids of
every split, the driver merges them into one sorted mapping per side (index i is the
i-th id; see ``formats.ratings.merge_ids`` for the order) and saves it under
``transform/``, so predictions can take raw ids. Every row's ids are mapped, test rows
included: a user seen only in the test rows still gets an index (its factors stay at
their initial values), which keeps the held-out error honest about cold starts.
The mean training rating is recorded: it is the global bias a biased model starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from cirrus_airflow.formats import ratings as ratings_format
from cirrus_airflow.shards import RATINGS_SCHEMA
from cirrus_airflow.transforms.workspace import TRANSFORM, Workspace

_FILES = {"users": f"{TRANSFORM}/user-ids.parquet", "items": f"{TRANSFORM}/item-ids.parquet"}


@dataclass(frozen=True)
class RatingsTransform:
    num_users: int | None = None
    num_items: int | None = None
    rating_stats: dict | None = None
    _ids: dict[str, pa.Array] | None = field(default=None, compare=False, repr=False)

    kind = "ratings"
    finishes_after_shuffle = False  # its fit decides which rows are kept, or what ids they get

    @property
    def feature_dim(self) -> int:
        """Both tables end to end: users first, then items (one parameter-server key space)."""
        if self.num_users is None or self.num_items is None:
            raise ValueError("the number of users and items is known once the transform is fitted")
        return self.num_users + self.num_items

    def summarize(self, rows, train: np.ndarray, workspace: Workspace, key: str) -> dict:
        ratings = rows.ratings[train].astype(np.float64)
        side = {}
        for name, values in (("users", rows.users), ("items", rows.items)):
            ids = pa.table({"id": ratings_format.distinct_ids(values)})
            side[name] = workspace.write_table(workspace.side_uri(key, f"{name}.parquet"), ids)
        return {
            "ids": side,
            "count": int(ratings.size),
            "sum": float(ratings.sum()),
            "sum_sq": float((ratings * ratings).sum()),
            "min": float(ratings.min()) if ratings.size else None,
            "max": float(ratings.max()) if ratings.size else None,
        }

    def fit(self, summaries: list[dict], workspace: Workspace) -> RatingsTransform:
        ids = {}
        for name in ("users", "items"):
            parts = [workspace.read_table(s["ids"][name]).column("id").combine_chunks() for s in summaries]
            ids[name] = ratings_format.merge_ids(parts)
            workspace.write_table(workspace.artifact_uri(_FILES[name]), pa.table({"id": ids[name]}))
        count = sum(s["count"] for s in summaries)
        total = sum(s["sum"] for s in summaries)
        mean = total / count if count else 0.0
        var = sum(s["sum_sq"] for s in summaries) / count - mean * mean if count else 0.0
        lows = [s["min"] for s in summaries if s["min"] is not None]
        highs = [s["max"] for s in summaries if s["max"] is not None]
        stats = {"count": count, "mean": mean, "std": float(np.sqrt(max(var, 0.0))),
                 "min": min(lows) if lows else None, "max": max(highs) if highs else None}
        return replace(self, num_users=len(ids["users"]), num_items=len(ids["items"]), rating_stats=stats, _ids=ids)

    def load(self, workspace: Workspace) -> RatingsTransform:
        if self._ids is not None:
            return self
        ids = {name: workspace.read_table(workspace.artifact_uri(path)).column("id").combine_chunks()
               for name, path in _FILES.items()}
        return replace(self, _ids=ids)

    def usable(self, block, data: bytes, first_line: int):
        """The rows it can take: every parsed row (an id the fit did not see cannot occur)."""
        return block.rows

    def apply(self, rows) -> pa.Table:
        if self._ids is None:
            raise ValueError("RatingsTransform.apply needs the id mappings (call fit or load first)")
        users = ratings_format.map_ids(rows.users, self._ids["users"])
        items = ratings_format.map_ids(rows.items, self._ids["items"])
        if (users < 0).any() or (items < 0).any():
            raise ValueError("a user or item id is missing from the mapping; the first pass should have seen "
                             "every id of this input (was the input changed between the passes?)")
        return pa.table({"user": pa.array(users, pa.int32()), "item": pa.array(items, pa.int32()),
                         "rating": pa.array(np.asarray(rows.ratings, np.float32))}, schema=RATINGS_SCHEMA)

    def to_json(self) -> dict:
        return {
            "family": "ratings",
            "num_users": self.num_users,
            "num_items": self.num_items,
            "user_ids": _FILES["users"],
            "item_ids": _FILES["items"],
            "rating_stats": self.rating_stats,
            "mean_rating": None if self.rating_stats is None else self.rating_stats["mean"],
            "layout": {"users": [0, self.num_users], "items": [self.num_users, self.feature_dim]}
            if self.num_users is not None else None,
        }

    @classmethod
    def from_json(cls, doc: dict) -> RatingsTransform:
        return cls(num_users=doc.get("num_users"), num_items=doc.get("num_items"),
                   rating_stats=doc.get("rating_stats"))
