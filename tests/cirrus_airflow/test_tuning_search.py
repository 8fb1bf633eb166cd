"""The search driver on generated ratings: configurations run a few at a time on one shared
parameter server, the hopeless ones stopped early, budgets end the search, a retry keeps
what finished, and a kill stops one configuration."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cirrus_airflow.storage import Storage
from cirrus_airflow.tuning.layout import request_kill
from cirrus_airflow.tuning.search import Search, TuneConfig
from cirrus_airflow.tuning.space import grid

BASE = {"workers": 1, "factors": 4, "epochs": 40, "eval_interval_s": 0.1, "eval_rows": 1000, "poll_interval_s": 0.05}


@pytest.fixture
def shards(ratings_shards):
    return ratings_shards(users=150, items=300, rows=12_000, seed=2)


@pytest.fixture
def executors(inline_executor):
    kind = type(inline_executor)
    made = []

    def factory(params):
        made.append(params)
        return kind(max_concurrency=2)  # a worker and the live evaluator

    factory.made = made
    return factory


def _search(shards, out, executors, **kw):
    configs = kw.pop("configs", grid({"learning_rate": [1e-6, 0.1, 1e-5, 0.05]}))
    base = kw.pop("base", BASE)
    config = TuneConfig(data=str(shards), output=str(out), model="mf", configs=configs, base=base, **kw)
    return Search(config, storage=Storage(), executors=executors)


# ASHA lets the first arrival at each rung through. The launch order of seed 1 (1e-6, 0.1, 1e-5,
# 0.05) pairs a hopeless configuration with a good one, so the second hopeless one meets a good
# loss at its first rung whatever the timing; with both hopeless ones first (seed 0), whether one
# of them is stopped depends on which of the two reaches each rung first.
ASHA_ORDER_SEED = 1


def test_asha_stops_the_hopeless_configurations_and_the_best_is_a_good_one(shards, tmp_path, executors):
    results = _search(shards, tmp_path / "tune", executors, grace=0.3, eta=2, concurrency=2,
                      seed=ASHA_ORDER_SEED).run()
    statuses = {c["params"]["learning_rate"]: c["status"] for c in results["configs"]}
    assert set(statuses.values()) <= {"finished", "stopped_early"} and "stopped_early" in statuses.values()
    assert results["best"]["params"]["learning_rate"] in (0.1, 0.05)
    assert results["best"]["metric"] == min(c["metric"] for c in results["configs"])
    assert results["worker_seconds_total"] == pytest.approx(sum(c["worker_seconds"] for c in results["configs"]))
    saved = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert saved["best"]["id"] == results["best"]["id"] and len(saved["configs"]) == 4
    assert all((tmp_path / "tune" / "configs" / c["id"] / "status.json").exists() for c in saved["configs"])


def test_asha_can_count_examples_instead_of_seconds(shards, tmp_path, executors):
    results = _search(shards, tmp_path / "tune", executors, resource="examples", grace=3000, eta=2,
                      concurrency=2, seed=ASHA_ORDER_SEED).run()
    assert "stopped_early" in {c["status"] for c in results["configs"]}
    assert results["best"]["params"]["learning_rate"] in (0.1, 0.05)


def test_a_retry_runs_only_what_had_not_ended(shards, tmp_path, executors):
    first = _search(shards, tmp_path / "tune", executors, early_stopping="none", max_configs=2).run()
    assert sorted(c["status"] for c in first["configs"]) == ["finished", "finished", "over_budget", "over_budget"]
    ran = {c["id"]: c["metric"] for c in first["configs"] if c["status"] == "finished"}
    executors.made.clear()
    again = _search(shards, tmp_path / "tune", executors, early_stopping="none").run()
    ran_params = [c["params"] for c in first["configs"] if c["status"] == "finished"]
    assert len(executors.made) == 2 and not [p for p in executors.made if p in ran_params]  # only the others
    assert [c["status"] for c in again["configs"]] == ["finished"] * 4
    assert {c["id"]: c["metric"] for c in again["configs"] if c["id"] in ran} == ran


@pytest.mark.parametrize("budget", [{"budget_worker_seconds": 0.01}, {"budget_dollars": 1e-9}])
def test_a_budget_ends_the_search_cleanly(shards, tmp_path, executors, budget):
    results = _search(shards, tmp_path / "tune", executors, early_stopping="none", concurrency=1, **budget).run()
    statuses = sorted(c["status"] for c in results["configs"])
    assert statuses in (["finished"] + ["over_budget"] * 3, ["over_budget"] * 4)
    assert len(executors.made) == 1  # the first to run used up the budget: nothing else started


def test_a_killed_configuration_ends_as_killed_and_keeps_its_model(shards, tmp_path, executors):
    search = _search(shards, tmp_path / "tune", executors, early_stopping="none", concurrency=1,
                     configs=[{"learning_rate": 0.05}])
    search.progress = lambda point: search.kill(point["config"])
    results = search.run()
    (config,) = results["configs"]
    assert config["status"] == "killed" and config["stopped_by"] == "killed"
    assert config["model_uri"] and config["metric"] is not None


def test_bad_searches_are_refused_before_anything_runs(shards, tmp_path, executors):
    with pytest.raises(ValueError, match="configs is empty"):
        _search(shards, tmp_path, executors, configs=[])
    with pytest.raises(ValueError, match="output belong"):
        _search(shards, tmp_path, executors, configs=[{"output": "x"}])
    with pytest.raises(ValueError, match="resource must be one of"):
        _search(shards, tmp_path, executors, resource="epochs")
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        _search(shards, tmp_path, executors, configs=[{"learning_rate": -1.0}])


def test_a_kill_request_from_another_process_stops_the_search(shards, tmp_path, executors):
    # Long runs: the kill must land while the first configuration trains (workers keep their
    # decoded rows, and 40 epochs of these ratings can end before the first progress point).
    search = _search(shards, tmp_path / "tune", executors, early_stopping="none", concurrency=1,
                     base={**BASE, "epochs": 400})
    asked = []

    def kill_once(point):  # `tune kill RUN` from another process, once
        if not asked:
            asked.append(request_kill(Storage(), str(tmp_path / "tune")))

    search.progress = kill_once
    results = search.run()
    assert [c["status"] for c in results["configs"]] == ["killed"] * 4
    assert len(executors.made) == 1 and not list((tmp_path / "tune" / "_kill").iterdir())


def test_the_command_line_tunes_with_a_grid_and_prints_json(shards, tmp_path):
    cli = Path(sys.executable).with_name("cirrus-airflow")
    out = tmp_path / "tune"
    run = subprocess.run([str(cli), "tune", "--data", str(shards), "--model", "mf", "--output", str(out),
                          "--grid", "learning_rate=0.05,0.1", "--grid", "factors=2", "--concurrency", "2",
                          "--workers", "1", "--epochs", "2", "--early-stopping", "none", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert [c["params"] for c in result["configs"]] == [{"learning_rate": 0.05, "factors": 2},
                                                       {"learning_rate": 0.1, "factors": 2}]
    assert {c["status"] for c in result["configs"]} == {"finished"} and result["worker_seconds_total"] > 0
    assert result["best"]["metric"] == min(c["metric"] for c in result["configs"])
    report = subprocess.run([str(cli), "report", str(out)], capture_output=True, text=True, timeout=60).stdout
    assert f"* {result['best']['id']}" in report and "worker-seconds in all" in report
    assert f"report with plots: {out}/report.html" in report
    kill = subprocess.run([str(cli), "tune", "kill", str(out), result["best"]["id"], "--json"],
                          capture_output=True, text=True, timeout=60)
    assert kill.returncode == 0 and (out / "_kill" / result["best"]["id"]).exists()
    bad = subprocess.run([str(cli), "tune", "--data", str(shards), "--output", str(out), "--grid", "colour=red"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "'colour' is not a parameter a search can vary" in bad.stderr


def test_while_it_runs_the_search_publishes_live_state_with_spending(shards, tmp_path, executors):
    out = tmp_path / "tune"
    search = _search(shards, out, executors, early_stopping="none", concurrency=1,
                     configs=[{"learning_rate": 0.05}, {"learning_rate": 0.1}], base={**BASE, "epochs": 200})
    seen = []

    def look(point):
        if (out / "live.json").exists():
            seen.append(json.loads((out / "live.json").read_text()))

    search.progress = look
    results = search.run()
    running = [s for s in seen if s["state"] == "running" and s["configs"][0]["curve"]]
    assert running, "live.json never showed a running configuration with a curve"
    # Between one configuration's end and the next one's start a snapshot may show none running.
    statuses = [{c["status"] for c in s["configs"]} for s in running]
    assert all(seen <= {"running", "pending", "finished"} for seen in statuses)
    assert any("running" in seen for seen in statuses), statuses
    live = json.loads((out / "live.json").read_text())
    assert live["state"] == "done" and live["configs"] == results["configs"]
    for config in results["configs"]:
        costs = [p["cost_usd"] for p in config["curve"]]
        assert costs and costs == sorted(costs) and costs[0] > 0  # spending grows as training goes on
        assert 0 < costs[-1] <= config["cost_usd"]  # the final figure adds the server and S3


def test_a_search_ends_with_a_stand_alone_report_and_plots(shards, tmp_path, executors):
    out = tmp_path / "tune"
    results = _search(shards, out, executors, grace=0.3, eta=2, concurrency=2).run()
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "<link" not in page  # nothing to fetch: it opens from a file
    assert "CirrusPage.render" in page and results["best"]["id"] in page
    for name in ("loss_vs_time.png", "loss_vs_cost.png"):
        image = (out / name).read_bytes()
        assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 10_000


def test_a_configuration_killed_while_it_waits_never_starts(shards, tmp_path, executors):
    search = _search(shards, tmp_path / "tune", executors, early_stopping="none", concurrency=1,
                     configs=[{"learning_rate": 0.05}, {"learning_rate": 0.1}])
    waiting = {t.id for t in search.trials}
    search.progress = lambda point: search.kill(next(iter(waiting - {point["config"]})))
    results = search.run()
    statuses = sorted(c["status"] for c in results["configs"])
    assert statuses == ["finished", "killed"] and len(executors.made) == 1
    (killed,) = [c for c in results["configs"] if c["status"] == "killed"]
    assert killed["worker_seconds"] == 0 and killed["model_uri"] is None


def test_a_diverging_configuration_is_stopped_and_never_the_best(shards, tmp_path, executors):
    results = _search(shards, tmp_path / "tune", executors, grace=0.2, eta=2, concurrency=2,
                      configs=[{"learning_rate": 0.05}, {"learning_rate": 1e6, "optimizer": "sgd"}]).run()
    by_rate = {c["params"]["learning_rate"]: c for c in results["configs"]}
    assert results["best"]["params"]["learning_rate"] == 0.05
    # It blows up: the server refuses its non-finite pushes (the run fails), or its held-out
    # loss turns infinite (a gap in its curve, and the rule stops it).
    assert by_rate[1e6]["status"] in ("failed", "stopped_early") and by_rate[1e6]["metric"] is None
    saved = json.loads((tmp_path / "tune" / "results.json").read_text())
    for config in saved["configs"]:
        values = [config["metric"], config["best_live_loss"]] + [p["test_loss"] for p in config["curve"]]
        assert all(v is None or math.isfinite(v) for v in values)


def test_a_budget_counts_a_configuration_s_spending_while_it_runs(shards, tmp_path, executors):
    """The only configuration would train 400 epochs; the budget stops it long before it ends,
    which it could not if worker-seconds were counted only when a configuration ended."""
    results = _search(shards, tmp_path / "tune", executors, early_stopping="none", budget_worker_seconds=1.0,
                      base={**BASE, "epochs": 400}, configs=[{"learning_rate": 0.05}]).run()
    (config,) = results["configs"]
    assert config["status"] == "over_budget" and config["model_uri"]  # stopped mid-run, model kept
    assert 1.0 <= config["worker_seconds"] < 10
