"""Optimizers applied on the server, each with its own per-coordinate state.

Workers send raw gradients and the server owns the update rule, so every worker sees
one consistent optimizer state however many of them push (the Cirrus design). An
optimizer updates only the rows a push touches: L2 regularisation is applied lazily to
those rows too, which is the usual choice for sparse models where most coordinates
are absent from any one minibatch.

A new optimizer subclasses :class:`Optimizer`, declares its options with defaults,
allocates its state in ``slots`` (which a checkpoint can save as plain arrays) and
implements :meth:`Optimizer.step`; registering it in ``OPTIMIZERS`` makes it
available to ``create_table``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ps_service.errors import PSError

_COMMON_DEFAULTS: Mapping[str, float] = {"learning_rate": 0.1, "l2": 0.0}


class Optimizer(ABC):
    """Updates ``weights[rows]`` in place from the summed gradients of one push."""

    name: ClassVar[str]
    defaults: ClassVar[Mapping[str, float]] = _COMMON_DEFAULTS

    def __init__(self, shape: tuple[int, int], options: Mapping[str, float]) -> None:
        self.options = dict(options)
        self.learning_rate = np.float32(options["learning_rate"])
        self.l2 = np.float32(options["l2"])
        self.slots: dict[str, np.ndarray] = self.create_slots(shape)

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Per-coordinate state arrays, the same shape as the table; none by default."""
        return {}

    def apply(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> None:
        """``rows`` must be unique (duplicates summed beforehand) so fancy assignment is exact."""
        if self.l2:
            grads = grads + self.l2 * weights[rows]
        self.step(weights, rows, grads)

    @abstractmethod
    def step(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> None:
        """Apply the rule to ``weights[rows]`` given regularised gradients."""


class SGD(Optimizer):
    name = "sgd"

    def step(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> None:
        weights[rows] -= self.learning_rate * grads


class Adagrad(Optimizer):
    """Per-coordinate step sizes that shrink with the squared gradients seen so far, which
    suits sparse features: rare features keep large steps (Duchi et al., 2011)."""

    name = "adagrad"
    defaults = {**_COMMON_DEFAULTS, "initial_accumulator": 0.1, "eps": 1e-8}

    def __init__(self, shape: tuple[int, int], options: Mapping[str, float]) -> None:
        super().__init__(shape, options)
        self.eps = np.float32(options["eps"])

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        initial = self.options["initial_accumulator"]
        return {"accumulator": np.full(shape, initial, dtype=np.float32)}

    def step(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray) -> None:
        accumulator = self.slots["accumulator"]
        accumulated = accumulator[rows]
        accumulated += grads * grads
        accumulator[rows] = accumulated
        denominator = np.sqrt(accumulated, out=accumulated)
        denominator += self.eps
        weights[rows] -= self.learning_rate * grads / denominator


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Adagrad)}


def resolve_options(optimizer: str, given: Mapping[str, Any]) -> dict[str, float]:
    """Every option of ``optimizer`` with defaults filled in, so equal specs compare equal."""
    cls = _optimizer_class(optimizer)
    unknown = sorted(set(given) - set(cls.defaults))
    if unknown:
        raise PSError(
            f"optimizer {optimizer!r} has no option {unknown[0]!r}; "
            f"its options are: {', '.join(sorted(cls.defaults))}"
        )
    options = {name: _check_option(optimizer, name, given.get(name, default))
               for name, default in cls.defaults.items()}
    if options["learning_rate"] <= 0:
        raise PSError(f"optimizer {optimizer!r}: learning_rate must be > 0, got {options['learning_rate']}")
    return options


def make_optimizer(optimizer: str, shape: tuple[int, int], options: Mapping[str, float]) -> Optimizer:
    return _optimizer_class(optimizer)(shape, options)


def _optimizer_class(optimizer: str) -> type[Optimizer]:
    try:
        return OPTIMIZERS[optimizer]
    except KeyError:
        raise PSError(
            f"unknown optimizer {optimizer!r}; choose one of: {', '.join(sorted(OPTIMIZERS))}"
        ) from None


def _check_option(optimizer: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PSError(f"optimizer {optimizer!r}: {name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise PSError(f"optimizer {optimizer!r}: {name} must be finite and >= 0, got {value!r}")
    return float(value)
