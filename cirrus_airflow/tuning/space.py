"""The configurations a search tries: a grid (the Cartesian product of value lists) or
random samples (log-uniform, uniform, integer or choice distributions, from a seed).

Any training parameter can be searched, worker count and worker memory included. A
name is checked against the training settings before anything runs, and every value
is given the type of the setting it sets (so ``workers=2,4`` are ints and
``learning_rate=0.1`` a float), with a message that says what was expected.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from cirrus_airflow.training import TrainConfig

# Settings a search may not vary: where the run reads and writes, and the run's plumbing.
_FIXED = {"data", "output", "ps_address", "ps_token", "report_interval_s", "poll_interval_s"}
# Searchable besides TrainConfig's: the serverless function's memory size.
_EXTRA = {"worker_memory_mb": int}
_TYPES = {f.name: f.type for f in fields(TrainConfig)}
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")


def searchable() -> dict[str, type]:
    """Every parameter a search may vary, with the type of its values."""
    params = {name: _python_type(kind) for name, kind in _TYPES.items() if name not in _FIXED}
    return {**params, **_EXTRA}


def _python_type(annotation: Any) -> type:
    text = str(annotation)
    for kind in (bool, int, float, str):  # "float | None" is a float; bool before int
        if kind.__name__ in text:
            return kind
    return str


def typed(name: str, value: Any) -> Any:
    """``value`` as the parameter ``name`` takes it; a ValueError says what was expected."""
    kinds = searchable()
    if name not in kinds:
        raise ValueError(f"{name!r} is not a parameter a search can vary; choose from {', '.join(sorted(kinds))}")
    kind = kinds[name]
    try:
        if kind is bool:
            if str(value).lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return str(value).lower() in ("true", "1")
        if kind is int:
            number = float(value)
            if number != int(number):
                raise ValueError
            return int(number)
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} takes {kind.__name__} values, got {value!r}") from None


def grid(values: dict[str, list]) -> list[dict]:
    """Every combination of the value lists, in a fixed order (the first name varies slowest)."""
    if not values:
        raise ValueError("a grid needs at least one parameter with a list of values")
    checked = {}
    for name, options in values.items():
        if isinstance(options, (str, bytes)) or not list(options):
            raise ValueError(f"grid values of {name} must be a non-empty list, got {options!r}")
        checked[name] = [typed(name, v) for v in options]
    names = list(checked)
    return [dict(zip(names, combo)) for combo in itertools.product(*(checked[n] for n in names))]


@dataclass(frozen=True)
class Distribution:
    """One parameter's random distribution: ``loguniform:LO:HI``, ``uniform:LO:HI``,
    ``int:LO:HI`` (inclusive) or ``choice:A,B,...``."""

    name: str
    kind: str
    args: tuple

    @classmethod
    def parse(cls, name: str, spec: str) -> Distribution:
        kind, _, rest = str(spec).partition(":")
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"{name}: distribution must be one of {DISTRIBUTIONS} (as in 'loguniform:1e-3:1'), "
                             f"got {spec!r}")
        if kind == "choice":
            options = tuple(typed(name, v) for v in rest.split(",") if v != "")
            if not options:
                raise ValueError(f"{name}: choice needs values, as in 'choice:8,16,32'")
            return cls(name, kind, options)
        try:
            low, high = (float(v) for v in rest.split(":"))
        except ValueError:
            raise ValueError(f"{name}: {kind} needs two bounds, as in '{kind}:LO:HI', got {spec!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"{name}: the bounds must be finite with LO < HI, got {spec!r}")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"{name}: loguniform bounds must be positive, got {spec!r}")
        typed(name, low if kind != "int" else int(low))  # the parameter takes numbers at all
        return cls(name, kind, (low, high))

    def sample(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "loguniform":
            value = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        elif self.kind == "int":
            value = int(rng.integers(math.ceil(low), math.floor(high) + 1))
        else:
            value = float(rng.uniform(low, high))
        return typed(self.name, value)


def random_search(distributions: dict[str, str], *, samples: int, seed: int = 0) -> list[dict]:
    """``samples`` configurations drawn from the distributions; the same seed draws the same ones."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not distributions:
        raise ValueError("a random search needs at least one parameter with a distribution")
    parsed = [Distribution.parse(name, spec) for name, spec in distributions.items()]
    rng = np.random.default_rng(seed)
    return [{d.name: d.sample(rng) for d in parsed} for _ in range(samples)]


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` from the command line."""
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"expected NAME=VALUES, as in 'learning_rate=0.01,0.1', got {text!r}")
    return name.strip().replace("-", "_"), value.strip()
