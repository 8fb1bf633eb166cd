"""Optimizers applied on the server, each with its own per-coordinate state.

Workers send raw gradients and the server owns the update rule, so every worker sees
one consistent optimizer state however many of them push (the Cirrus design). An
optimizer updates only the rows a push touches: L2 regularisation, momentum decay and
moment estimates are all applied lazily to those rows, which is the usual choice for
sparse models where most coordinates are absent from any one minibatch.

The table calls ``optimizer.apply(weights, rows, grads, step)`` once per push, where
``step`` is the 1-based number of that push on the table (``table.updates + 1``). The
step is an input rather than a counter the optimizer keeps, and all state lives in
``optimizer.slots`` (float32 arrays the shape of the table), so a checkpoint of
``(weights, slots, updates)`` restores a table exactly::

    optimizer = make_optimizer(spec.optimizer, shape, spec.options)
    optimizer.load_slots(saved_slots)  # same names and shapes as optimizer.slots
    # ...restore the weights, then pass updates + 1 as the next step

Every optimizer shares a learning-rate schedule, a function of the table's global
step ``t``: ``constant`` (lr), ``inverse_sqrt`` (lr / sqrt(1 + (t - 1) / decay_steps))
or ``step`` (lr * decay_rate ** floor((t - 1) / decay_steps)).

A new optimizer subclasses :class:`Optimizer`, declares its options (name, default and
allowed range) in ``option_specs``, allocates its state in ``create_slots`` and
implements :meth:`Optimizer.update`; registering it in ``OPTIMIZERS`` makes it
available to ``create_table``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ps_service.errors import PSError

OptionValue = float | str


@dataclass(frozen=True)
class Number:
    """A numeric option in the range from ``low`` to ``high``, each end inclusive or not."""

    default: float
    low: float
    high: float = math.inf
    low_inclusive: bool = True
    high_inclusive: bool = False
    integer: bool = False

    def resolve(self, value: Any) -> float:
        """``value`` as stored in the spec; ints for integer options so 1000 and 1000.0 agree."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self._in_range(value):
            raise ValueError(self.describe())
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        if self.high == math.inf:
            kind = "an integer" if self.integer else "a finite number"
            return f"{kind} {'>=' if self.low_inclusive else '>'} {self.low:g}"
        kind = "an integer" if self.integer else "a number"
        opening = "[" if self.low_inclusive else "("
        closing = "]" if self.high_inclusive else ")"
        return f"{kind} in {opening}{self.low:g}, {self.high:g}{closing}"

    def _in_range(self, value: float) -> bool:
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        above = value >= self.low if self.low_inclusive else value > self.low
        below = value <= self.high if self.high_inclusive else value < self.high
        return above and below


@dataclass(frozen=True)
class Choice:
    """A string option naming one of a fixed set of alternatives."""

    default: str
    choices: tuple[str, ...]

    def resolve(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValueError(self.describe())
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(repr(choice) for choice in self.choices)


OptionSpec = Number | Choice


def _constant(t: int, decay_steps: int, decay_rate: float) -> float:
    return 1.0


def _inverse_sqrt(t: int, decay_steps: int, decay_rate: float) -> float:
    return 1.0 / math.sqrt(1.0 + (t - 1) / decay_steps)


def _step_decay(t: int, decay_steps: int, decay_rate: float) -> float:
    return decay_rate ** ((t - 1) // decay_steps)


# Multipliers of the base learning rate at global step t (1-based, so step 1 uses lr).
SCHEDULES: dict[str, Callable[[int, int, float], float]] = {
    "constant": _constant,
    "inverse_sqrt": _inverse_sqrt,
    "step": _step_decay,
}

_COMMON_OPTIONS: Mapping[str, OptionSpec] = {
    "learning_rate": Number(0.1, low=0.0, low_inclusive=False),
    "l2": Number(0.0, low=0.0),
    "schedule": Choice("constant", tuple(SCHEDULES)),
    "decay_steps": Number(1000, low=1, integer=True),
    "decay_rate": Number(0.5, low=0.0, high=1.0, low_inclusive=False, high_inclusive=True),
}
_MOMENTUM = Number(0.9, low=0.0, high=1.0)
# eps keeps the denominators of Adagrad and Adam away from 0 (0/0 is NaN for a zero gradient);
# below ~1e-30 it would round to 0 in float32 or vanish beside any accumulated square.
_EPS = Number(1e-8, low=1e-30)


class Optimizer(ABC):
    """Updates ``weights[rows]`` in place from the summed gradients of one push."""

    name: ClassVar[str]
    option_specs: ClassVar[Mapping[str, OptionSpec]] = _COMMON_OPTIONS

    def __init__(self, shape: tuple[int, int], options: Mapping[str, OptionValue]) -> None:
        self.options = dict(options)
        self.l2 = np.float32(options["l2"])
        self.base_rate = float(options["learning_rate"])
        self.schedule = SCHEDULES[str(options["schedule"])]
        self.decay_steps = int(options["decay_steps"])
        self.decay_rate = float(options["decay_rate"])
        self.slots: dict[str, np.ndarray] = self.create_slots(shape)

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Per-coordinate state arrays, the same shape as the table; none by default."""
        return {}

    def load_slots(self, saved: Mapping[str, np.ndarray]) -> None:
        """Restore state from a checkpoint, in place so the arrays stay float32 and table-shaped."""
        if set(saved) != set(self.slots):
            raise PSError(
                f"optimizer {self.name!r} has slots {sorted(self.slots)}; the checkpoint has "
                f"{sorted(saved)}; restore it with the optimizer it was saved from"
            )
        for name, values in saved.items():
            if np.shape(values) != self.slots[name].shape:
                raise PSError(
                    f"optimizer slot {name!r} has shape {self.slots[name].shape}; the checkpoint "
                    f"has {np.shape(values)}; restore it into a table of the same size and width"
                )
        for name, values in saved.items():
            self.slots[name][...] = values

    def learning_rate(self, step: int) -> np.float32:
        """The scheduled rate at global step ``step``, in float32 so the weights stay float32."""
        return np.float32(self.base_rate * self.schedule(step, self.decay_steps, self.decay_rate))

    def apply(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        """Apply push number ``step`` (1-based); ``rows`` must be unique (duplicates summed
        beforehand) so fancy assignment is exact."""
        if step < 1:
            raise ValueError(f"step counts pushes from 1, got {step}")
        if self.l2:
            grads = grads + self.l2 * weights[rows]
        self.update(weights, rows, grads, step)

    @abstractmethod
    def update(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        """Apply the rule to ``weights[rows]`` given regularised gradients."""


class SGD(Optimizer):
    name = "sgd"

    def update(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        weights[rows] -= self.learning_rate(step) * grads


class Adagrad(Optimizer):
    """Per-coordinate step sizes that shrink with the squared gradients seen so far, which
    suits sparse features: rare features keep large steps (Duchi et al., 2011)."""

    name = "adagrad"
    option_specs = {
        **_COMMON_OPTIONS,
        "initial_accumulator": Number(0.1, low=0.0),
        "eps": _EPS,
    }

    def __init__(self, shape: tuple[int, int], options: Mapping[str, OptionValue]) -> None:
        super().__init__(shape, options)
        self.eps = np.float32(options["eps"])

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        initial = float(self.options["initial_accumulator"])
        return {"accumulator": np.full(shape, initial, dtype=np.float32)}

    def update(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        accumulator = self.slots["accumulator"]
        accumulated = accumulator[rows]
        accumulated += grads * grads
        accumulator[rows] = accumulated
        denominator = np.sqrt(accumulated, out=accumulated)
        denominator += self.eps
        weights[rows] -= self.learning_rate(step) * grads / denominator


class Momentum(Optimizer):
    """Heavy-ball momentum, v = mu*v + g; w -= lr*v: smooths noisy minibatch gradients.

    Lazily, a row's velocity decays only when the row is pushed, so a rare feature keeps
    its momentum between the minibatches that contain it instead of losing it to decay.
    """

    name = "momentum"
    option_specs = {**_COMMON_OPTIONS, "momentum": _MOMENTUM}

    def __init__(self, shape: tuple[int, int], options: Mapping[str, OptionValue]) -> None:
        super().__init__(shape, options)
        self.momentum = np.float32(options["momentum"])

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {"velocity": np.zeros(shape, dtype=np.float32)}

    def update(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        velocity = self.slots["velocity"]
        updated = velocity[rows]
        updated *= self.momentum
        updated += grads
        velocity[rows] = updated
        weights[rows] -= self.learning_rate(step) * self.direction(grads, updated)

    def direction(self, grads: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """What the step follows: the velocity itself for heavy-ball momentum."""
        return velocity


class Nesterov(Momentum):
    """Nesterov momentum in the form w -= lr*(g + mu*v), which looks one velocity step
    ahead and so overshoots less than heavy-ball momentum (Sutskever et al., 2013)."""

    name = "nesterov"

    def direction(self, grads: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        return grads + self.momentum * velocity


class Adam(Optimizer):
    """Lazy Adam (Kingma & Ba, 2015): moment estimates of only the pushed rows are updated.

    Dense Adam decays the moments of every row on every step, which costs work in
    proportion to the table rather than the push and keeps moving rows whose features
    were absent. Lazy Adam touches only the pushed rows, and the bias correction uses
    ``step``, the table's global step, not a per-row count (as PyTorch's SparseAdam
    does). That needs no per-row counter, so the checkpoint stays (weights, slots,
    updates); the price is that a row first seen late gets a nearly uncorrected first
    moment, so its first steps are smaller than lr, a damping that suits rare features
    whose few gradients are noisy.
    """

    name = "adam"
    option_specs = {
        **_COMMON_OPTIONS,
        "beta1": Number(0.9, low=0.0, high=1.0),
        "beta2": Number(0.999, low=0.0, high=1.0),
        "eps": _EPS,
    }

    def __init__(self, shape: tuple[int, int], options: Mapping[str, OptionValue]) -> None:
        super().__init__(shape, options)
        self.beta1 = float(options["beta1"])
        self.beta2 = float(options["beta2"])
        self.eps = np.float32(options["eps"])

    def create_slots(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        return {
            "first_moment": np.zeros(shape, dtype=np.float32),
            "second_moment": np.zeros(shape, dtype=np.float32),
        }

    def update(self, weights: np.ndarray, rows: np.ndarray, grads: np.ndarray, step: int) -> None:
        mean = _decay_into(self.slots["first_moment"], rows, self.beta1, grads)
        square = _decay_into(self.slots["second_moment"], rows, self.beta2, grads * grads)
        mean /= np.float32(1.0 - self.beta1**step)
        square /= np.float32(1.0 - self.beta2**step)
        denominator = np.sqrt(square, out=square)
        denominator += self.eps
        weights[rows] -= self.learning_rate(step) * mean / denominator


def _decay_into(slot: np.ndarray, rows: np.ndarray, beta: float, values: np.ndarray) -> np.ndarray:
    """Set ``slot[rows] = beta*slot[rows] + (1-beta)*values``; returns a copy of the new rows
    that the caller may overwrite."""
    updated = slot[rows]
    updated *= np.float32(beta)
    updated += np.float32(1.0 - beta) * values
    slot[rows] = updated
    return updated


OPTIMIZERS: dict[str, type[Optimizer]] = {
    cls.name: cls for cls in (SGD, Adagrad, Momentum, Nesterov, Adam)
}


def resolve_options(optimizer: str, given: Mapping[str, Any]) -> dict[str, OptionValue]:
    """Every option of ``optimizer`` with defaults filled in, so equal specs compare equal."""
    cls = _optimizer_class(optimizer)
    unknown = sorted(set(given) - set(cls.option_specs))
    if unknown:
        raise PSError(_unknown_option_message(optimizer, unknown[0]))
    return {name: _resolve_option(optimizer, name, spec, given.get(name, spec.default))
            for name, spec in cls.option_specs.items()}


def make_optimizer(optimizer: str, shape: tuple[int, int], options: Mapping[str, OptionValue]) -> Optimizer:
    return _optimizer_class(optimizer)(shape, options)


def _optimizer_class(optimizer: str) -> type[Optimizer]:
    try:
        return OPTIMIZERS[optimizer]
    except KeyError:
        raise PSError(
            f"unknown optimizer {optimizer!r}; choose one of: {', '.join(sorted(OPTIMIZERS))}"
        ) from None


def _resolve_option(optimizer: str, name: str, spec: OptionSpec, value: Any) -> OptionValue:
    try:
        return spec.resolve(value)
    except ValueError as allowed:
        raise PSError(
            f"optimizer {optimizer!r}: {name} must be {allowed}, got {value!r}; "
            f"pass such a value, or leave {name} out for the default {spec.default!r}"
        ) from None


def _unknown_option_message(optimizer: str, option: str) -> str:
    """Name the optimizers that do take ``option``, since a misplaced option is the usual cause."""
    owners = sorted(name for name, cls in OPTIMIZERS.items() if option in cls.option_specs)
    hint = f" (it belongs to {', '.join(owners)})" if owners else ""
    return (
        f"optimizer {optimizer!r} has no option {option!r}{hint}; "
        f"its options are: {', '.join(sorted(OPTIMIZERS[optimizer].option_specs))}"
    )
