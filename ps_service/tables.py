"""Named tables of float32 weights: a spec, the weights, their optimizer and reports.

A table is ``size`` keys by ``width`` columns (1 for logistic regression, k+1 for a
matrix-factorisation factor with its bias). Every push is validated completely before
anything is written, so a bad request never leaves a table half-updated.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ps_service.errors import PSError
from ps_service.optimizers import OptionValue, make_optimizer, resolve_options
from ps_service.sharding import global_keys, local_rows
from ps_service.validation import check_keys, check_values, check_width

INITIALIZERS = ("zeros", "normal")
MAX_NAME_LENGTH = 200
_INIT_BLOCK_ROWS = 1 << 20
_SPEC_FIELDS = ("name", "size", "width", "optimizer", "initializer", "init_scale", "seed", "shard", "shards")
_SPEC_DEFAULTS: Mapping[str, Any] = {
    "width": 1,
    "optimizer": "sgd",
    "initializer": "zeros",
    "init_scale": 0.01,
    "seed": 0,
    "shard": 0,
    "shards": 1,
}


@dataclass(frozen=True)
class TableSpec:
    """Everything that defines a table; two create requests with equal specs are the same table."""

    name: str
    size: int
    width: int
    optimizer: str
    options: dict[str, OptionValue]
    initializer: str
    init_scale: float
    seed: int
    shard: int = 0
    shards: int = 1

    @property
    def rows(self) -> int:
        """Rows held here: the keys of ``size`` that fall on this shard."""
        return local_rows(self.size, self.shard, self.shards)

    @classmethod
    def from_request(cls, request: Mapping[str, Any]) -> TableSpec:
        """Split a create_table request into table fields and optimizer options, and check both."""
        fields = {**_SPEC_DEFAULTS, **{k: v for k, v in request.items() if k in _SPEC_FIELDS}}
        options = {k: v for k, v in request.items() if k not in _SPEC_FIELDS}
        name = _check_name(fields.get("name"))
        shards = _check_int(name, "shards", fields["shards"], minimum=1)
        shard = _check_int(name, "shard", fields["shard"], minimum=0)
        if shard >= shards:
            raise PSError(f"table {name!r}: shard must be below shards ({shards}), got {shard}")
        return cls(
            name=name,
            size=_check_int(name, "size", fields.get("size"), minimum=1),
            width=_check_int(name, "width", fields["width"], minimum=1),
            optimizer=str(fields["optimizer"]),
            options=resolve_options(str(fields["optimizer"]), options),
            initializer=_check_initializer(name, fields["initializer"]),
            init_scale=_check_scale(name, fields["init_scale"]),
            seed=_check_int(name, "seed", fields["seed"], minimum=0),
            shard=shard,
            shards=shards,
        )

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> TableSpec:
        """The inverse of :meth:`to_json` (a checkpoint's copy of the spec), checked again."""
        fields = {key: value for key, value in document.items() if key != "options"}
        return cls.from_request({**fields, **document.get("options", {})})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: TableSpec) -> list[str]:
        mine, theirs = self.to_json(), other.to_json()
        return [f"{key} {mine[key]!r} != {theirs[key]!r}" for key in mine if mine[key] != theirs[key]]


class Table:
    """The weights of one model and the optimizer state that updates them."""

    def __init__(self, spec: TableSpec, *, max_reports: int) -> None:
        self.spec = spec
        self.weights = initial_weights(spec)
        # Width-1 tables (logistic regression) are updated through a 1-D view: numpy's
        # gathers and scatters on a 1-D array take half the time of those on (n, 1).
        self._rows = self.weights.reshape(-1) if spec.width == 1 else self.weights
        self.optimizer = make_optimizer(spec.optimizer, self._rows.shape, spec.options)
        self.updates = 0
        self.stop = False
        self.reports: deque[dict[str, Any]] = deque(maxlen=max_reports)

    def pull(self, keys: np.ndarray) -> np.ndarray:
        self._check_keys(keys)
        return self._gather(keys)

    def push(self, keys: np.ndarray, grads: np.ndarray) -> None:
        self._check_gradients(keys, grads)
        self._apply(keys, grads)

    def push_pull(self, keys: np.ndarray, grads: np.ndarray, next_keys: np.ndarray) -> np.ndarray:
        """Check both halves before applying either, so an error leaves the table untouched."""
        self._check_gradients(keys, grads)
        self._check_keys(next_keys)
        self._apply(keys, grads)
        return self._gather(next_keys)

    def get(self) -> np.ndarray:
        """A copy, so later pushes cannot change a snapshot that is still being sent."""
        return self.weights.copy()

    def load_state(self, weights: np.ndarray, slots: Mapping[str, np.ndarray], updates: int,
                   reports: list[dict[str, Any]]) -> None:
        """Resume from a checkpoint: weights, optimizer state and step exactly as saved."""
        if weights.shape != self.weights.shape:
            raise PSError(f"checkpoint of table {self.spec.name!r} has shape {weights.shape}, "
                          f"its spec gives {self.weights.shape}")
        try:
            internal = {name: np.reshape(slot, self._rows.shape) for name, slot in slots.items()}
        except ValueError:
            raise PSError(f"checkpoint of table {self.spec.name!r} has optimizer state that is not "
                          f"of the table's shape {self.weights.shape}") from None
        self.optimizer.load_slots(internal)
        self.weights[...] = weights
        self.updates = updates
        self.reports.extend(reports)

    def state(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Copies of the weights and optimizer slots, each (rows, width), for a checkpoint
        taken between requests."""
        shape = self.weights.shape
        return self.weights.copy(), {name: slot.reshape(shape).copy() for name, slot in self.optimizer.slots.items()}

    def set(self, values: np.ndarray) -> None:
        """Replace the weights (warm start, restore); the optimizer state is kept."""
        if values.shape != self.weights.shape:
            raise PSError(
                f"table {self.spec.name!r} has shape {self.weights.shape}; "
                f"set_table sent {values.shape}"
            )
        self._check_finite(np.arange(len(values)), values, "set_table")
        self.weights[...] = values

    def report(self, *, worker: Any, name: Any, value: Any, count: Any) -> None:
        """Keep a metric a worker or evaluator measured, for the dashboard and early stopping."""
        table = self.spec.name
        if not isinstance(name, str) or not name:
            raise PSError(f"report to table {table!r}: metric name must be a non-empty string, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PSError(f"report {name!r} to table {table!r}: value must be a finite number, got {value!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise PSError(f"report {name!r} to table {table!r}: count must be an integer >= 1, got {count!r}")
        if worker is not None and not isinstance(worker, (str, int)):
            raise PSError(f"report {name!r} to table {table!r}: worker must be a string or integer, got {worker!r}")
        self.reports.append(
            {"t": time.time(), "worker": worker, "name": name, "value": float(value), "count": count}
        )

    def status(self, reports_since: float | None = None) -> dict[str, Any]:
        """``reports_since``: only the reports taken after that server time (all if None),
        found from the newest back, so a driver polling for new ones reads only those."""
        if reports_since is None:
            reports = list(self.reports)
        else:
            reports = list(itertools.takewhile(lambda report: report["t"] > reports_since, reversed(self.reports)))
            reports.reverse()
        return {
            "spec": self.spec.to_json(),
            "updates": self.updates,
            "stop": self.stop,
            "reports": reports,
        }

    # Keys arrive as int32 or int64; numpy converts any other index dtype to intp on every
    # gather and scatter, and an update does four of them, so convert once.

    def _gather(self, keys: np.ndarray) -> np.ndarray:
        return self._rows.take(keys.astype(np.intp, copy=False), axis=0).reshape(len(keys), self.spec.width)

    def _apply(self, keys: np.ndarray, grads: np.ndarray) -> None:
        keys = keys.astype(np.intp, copy=False)
        rows, summed = sum_duplicates(keys, grads.reshape((len(keys),) + self._rows.shape[1:]))
        self.optimizer.apply(self._rows, rows, summed, self.updates + 1)
        self.updates += 1

    def _check_keys(self, keys: np.ndarray) -> None:
        check_keys(self.spec.name, keys, len(self.weights), self.spec.size, self._global)

    def _global(self, local: np.ndarray) -> np.ndarray:
        return global_keys(local, self.spec.shard, self.spec.shards)

    def _check_gradients(self, keys: np.ndarray, grads: np.ndarray) -> None:
        check_width(self.spec.name, self.spec.width, keys, grads)
        self._check_keys(keys)
        self._check_finite(keys, grads, "push")

    def _check_finite(self, keys: np.ndarray, values: np.ndarray, operation: str) -> None:
        check_values(self.spec.name, keys, values, operation, self._global)


def sum_duplicates(keys: np.ndarray, grads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys and the summed gradient rows of each, without a Python loop over keys.

    ``grads`` has one row per key: shape (n, width), or (n,) for a width-1 table.
    Workers send ``np.unique``'s output, strictly increasing, which one comparison pass
    confirms. Otherwise sorting the keys alone (not argsort) tells whether any repeat;
    only then are they argsorted and each run of equal keys summed with ``reduceat``,
    which avoids ``searchsorted`` with unsorted needles (slow in numpy).
    """
    if (keys[1:] > keys[:-1]).all():
        return keys, grads
    sorted_keys = np.sort(keys)
    if not len(keys) or (sorted_keys[1:] != sorted_keys[:-1]).all():
        return keys, grads
    # Stable, and summed in float64: a key's rows add up in the order they were sent, so
    # a sharded group (which keeps that order per shard) gets the same bits as one server.
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    summed = np.add.reduceat(grads[order].astype(np.float64), starts, axis=0)
    return sorted_keys[starts], summed.astype(np.float32)


def initial_weights(spec: TableSpec) -> np.ndarray:
    """Zeros, or normal(0, init_scale) from ``seed`` so reruns start from the same point.

    A shard draws the whole table's stream in blocks and keeps its own rows, so a
    sharded table starts from exactly the weights a single server would hold.
    """
    try:
        if spec.initializer == "zeros":
            return np.zeros((spec.rows, spec.width), dtype=np.float32)
        if spec.shards == 1:
            weights = np.random.default_rng(spec.seed).standard_normal((spec.size, spec.width), dtype=np.float32)
        else:
            weights = _sharded_normal(spec)
        weights *= np.float32(spec.init_scale)
        return weights
    except MemoryError:
        raise PSError(
            f"table {spec.name!r} of {spec.size} x {spec.width} float32 does not fit in the "
            "server's memory; shard it or reduce its size"
        ) from None


def _sharded_normal(spec: TableSpec) -> np.ndarray:
    rng = np.random.default_rng(spec.seed)
    weights = np.empty((spec.rows, spec.width), dtype=np.float32)
    block = _INIT_BLOCK_ROWS - _INIT_BLOCK_ROWS % spec.shards  # a multiple of shards keeps the phase
    for start in range(0, spec.size, block):
        rows = rng.standard_normal((min(block, spec.size - start), spec.width), dtype=np.float32)
        mine = rows[spec.shard::spec.shards]
        first = start // spec.shards
        weights[first:first + len(mine)] = mine
    return weights


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME_LENGTH:
        raise PSError(f"table name must be a non-empty string of at most {MAX_NAME_LENGTH} bytes, got {name!r}")
    return name


def _check_int(table: str, what: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PSError(f"table {table!r}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_initializer(table: str, value: Any) -> str:
    if value not in INITIALIZERS:
        raise PSError(
            f"table {table!r}: initializer must be one of {', '.join(INITIALIZERS)}, got {value!r}"
        )
    return value


def _check_scale(table: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise PSError(f"table {table!r}: init_scale must be a finite number >= 0, got {value!r}")
    return float(value)
