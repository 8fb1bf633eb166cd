"""Rules that stop a hopeless configuration early, on its live held-out loss.

A running configuration reports ``(resource, loss)`` as it trains: the resource is what
it has used so far (training seconds or examples, as the search counts it), the loss its
latest held-out loss (lower is better). ``report`` says whether it should go on.

``ASHA`` (asynchronous successive halving, Li et al. 2020): rungs at ``grace``,
``grace * eta``, ``grace * eta**2``, ... resource. When a configuration first reaches
a rung, its loss is recorded there and compared with the ``n`` losses recorded at
that rung so far (its own included): it goes on only if it ranks among the best
``max(1, floor(n / eta))``, so about ``1/eta`` of the configurations climb each rung,
and no configuration ever waits for another (the first at a rung always goes on).

``MedianStopping`` (Golovin et al. 2017): past ``grace`` resource, a configuration
stops if its best loss so far is worse than the median, over the other configurations
that reached as much resource, of their mean loss up to that point; at least
``min_others`` of them must have got there for the rule to apply.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Protocol

import numpy as np

STRATEGIES = ("asha", "median", "none")


class EarlyStopping(Protocol):
    def report(self, config: str, resource: float, loss: float) -> bool:
        """Record a report; True if the configuration should go on."""


class NoEarlyStopping:
    """Every configuration runs to its end."""

    def report(self, config: str, resource: float, loss: float) -> bool:
        return True


class ASHA:
    def __init__(self, *, grace: float, eta: float = 3.0, max_resource: float | None = None) -> None:
        if not grace > 0:
            raise ValueError(f"grace must be positive (the resource of the first rung), got {grace}")
        if not eta > 1:
            raise ValueError(f"eta (the reduction factor) must be above 1, got {eta}")
        if max_resource is not None and max_resource < grace:
            raise ValueError(f"max_resource ({max_resource}) must be at least grace ({grace})")
        self.grace, self.eta, self.max_resource = grace, eta, max_resource
        self.rungs: dict[int, list[float]] = defaultdict(list)  # rung -> losses recorded there
        self.reached: dict[str, int] = {}  # configuration -> the highest rung it has reported at

    def rung_resource(self, rung: int) -> float:
        return self.grace * self.eta**rung

    def report(self, config: str, resource: float, loss: float) -> bool:
        _check(resource, loss)
        rung = self._rung_of(resource)
        first = self.reached.get(config, -1) + 1
        if rung < first:
            return True  # below the first rung, or at a rung it already passed
        self.reached[config] = rung
        # A report that skips rungs (evaluations sparser than the rungs) is judged at each of
        # them, as if it had reported there: otherwise it would meet an empty rung and go on.
        for r in range(first, rung + 1):
            recorded = self.rungs[r]
            recorded.append(loss)
            if sum(other < loss for other in recorded) >= max(1, int(len(recorded) // self.eta)):
                return False
        return True

    def _rung_of(self, resource: float) -> int:
        if resource < self.grace:
            return -1
        rung = int(math.floor(math.log(resource / self.grace, self.eta) + 1e-9))
        if self.max_resource is not None:  # no rung at or past the end: a finished run is not judged
            while rung > 0 and self.rung_resource(rung) >= self.max_resource:
                rung -= 1
        return rung


class MedianStopping:
    def __init__(self, *, grace: float, min_others: int = 3) -> None:
        if grace < 0:
            raise ValueError(f"grace must be zero or positive, got {grace}")
        if min_others < 1:
            raise ValueError(f"min_others must be at least 1, got {min_others}")
        self.grace, self.min_others = grace, min_others
        self.history: dict[str, list[tuple[float, float]]] = defaultdict(list)  # config -> [(resource, loss)]

    def report(self, config: str, resource: float, loss: float) -> bool:
        _check(resource, loss)
        self.history[config].append((resource, loss))
        if resource < self.grace:
            return True
        best = min(value for _, value in self.history[config])
        means = [np.mean([value for r, value in reports if r <= resource])
                 for other, reports in self.history.items()
                 if other != config and reports[-1][0] >= resource]
        if len(means) < self.min_others:
            return True
        return best <= float(np.median(means))


def make(strategy: str, *, grace: float, eta: float = 3.0, max_resource: float | None = None,
         min_others: int = 3) -> EarlyStopping:
    """The rule named ``strategy`` (``asha``, ``median`` or ``none``)."""
    if strategy == "asha":
        return ASHA(grace=grace, eta=eta, max_resource=max_resource)
    if strategy == "median":
        return MedianStopping(grace=grace, min_others=min_others)
    if strategy == "none":
        return NoEarlyStopping()
    raise ValueError(f"early stopping must be one of {STRATEGIES}, got {strategy!r}")


def _check(resource: float, loss: float) -> None:
    if not (resource >= 0 and math.isfinite(resource)):
        raise ValueError(f"resource must be a finite number >= 0, got {resource}")
    if math.isnan(loss):
        raise ValueError("loss is NaN: report a diverged configuration as +inf, which every rule stops")
