"""The cost model: public prices times what a run used, one documented table."""

import pytest

from cirrus_airflow.cost import PRICES, Usage, estimate


def test_every_item_is_priced_from_the_table():
    usage = Usage(worker_seconds=3600, memory_mb=2048, invocations=1_000_000, ps_instances=2, ps_seconds=1800,
                  s3_gets=10_000, s3_puts=1000)
    cost = estimate(usage)
    assert cost["lambda_compute_usd"] == pytest.approx(3600 * 2 * PRICES["lambda_gb_second"])  # 7,200 GB-s
    assert cost["lambda_requests_usd"] == pytest.approx(0.20)
    assert cost["parameter_server_usd"] == pytest.approx(2 * 0.5 * PRICES["ps_instance_hour"])
    assert cost["s3_requests_usd"] == pytest.approx(10 * 0.0004 + 1 * 0.005)
    parts = [v for k, v in cost.items() if k != "total_usd"]
    assert cost["total_usd"] == pytest.approx(sum(parts))
    assert estimate(usage, prices={"ps_instance_hour": 0.0})["parameter_server_usd"] == 0.0


def test_usage_must_be_counts_and_durations():
    with pytest.raises(ValueError, match="worker_seconds must be a finite number >= 0"):
        Usage(worker_seconds=-1, memory_mb=128, invocations=0, ps_instances=0, ps_seconds=0, s3_gets=0, s3_puts=0)
