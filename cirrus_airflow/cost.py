"""What a run would cost on AWS, at public on-demand prices.

One table, so that every estimate (a training summary, a tuning budget) prices the
same things the same way. Prices are US East (N. Virginia), on-demand, as published
in 2026; change ``PRICES`` (or pass ``prices=``) for another region or a discount.

    item                              price                     what is counted
    Lambda compute (x86)              $0.0000166667 / GB-s      billed seconds x memory (GB)
    Lambda requests                   $0.20 / million           invocations (workers, handovers, evaluations)
    parameter server (m5.large)       $0.096 / hour             each server process an instance, for the run
    S3 GET                            $0.0004 / thousand        row-group reads (footer + group) by workers
                                                                and evaluators
    S3 PUT                            $0.005 / thousand         journal writes, checkpoints, model and outputs

Requests to S3 are counted from the work (row groups read, journals written), not
metered; data transfer inside a region is free and is not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PRICES = {
    "lambda_gb_second": 0.0000166667,
    "lambda_request": 0.20 / 1_000_000,
    "ps_instance_hour": 0.096,
    "s3_get": 0.0004 / 1000,
    "s3_put": 0.005 / 1000,
}
# Lambda's default for a function whose memory is not known (one full vCPU).
DEFAULT_MEMORY_MB = 1769


@dataclass(frozen=True)
class Usage:
    """What a run used, in the units AWS bills."""

    worker_seconds: float
    memory_mb: int
    invocations: int
    ps_instances: int
    ps_seconds: float
    s3_gets: int
    s3_puts: int

    def __post_init__(self) -> None:
        for name in ("worker_seconds", "memory_mb", "invocations", "ps_instances", "ps_seconds", "s3_gets",
                     "s3_puts"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def estimate(usage: Usage, *, prices: dict[str, float] | None = None) -> dict:
    """The cost of ``usage`` in dollars, by item and in total."""
    p = {**PRICES, **(prices or {})}
    items = {
        "lambda_compute": usage.worker_seconds * usage.memory_mb / 1024 * p["lambda_gb_second"],
        "lambda_requests": usage.invocations * p["lambda_request"],
        "parameter_server": usage.ps_instances * usage.ps_seconds / 3600 * p["ps_instance_hour"],
        "s3_requests": usage.s3_gets * p["s3_get"] + usage.s3_puts * p["s3_put"],
    }
    return {"total_usd": sum(items.values()), **{f"{k}_usd": v for k, v in items.items()}}
