"""CirrusTuneOperator: validated at construction, runs the search in the task or from the
triggerer (deferrable), and returns a small XCom with the best configuration."""

import asyncio
import importlib
import json
from types import SimpleNamespace

import pytest

from cirrus_airflow.dashboard import registry
from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.links import CirrusDashboardLink
from cirrus_airflow.storage import Storage
from operators import CirrusTuneOperator
from operators import triggers as triggers_module
from operators import tune as tune_module

BASE = {"workers": 1, "factors": 2, "epochs": 2, "eval_interval_s": 0.2, "poll_interval_s": 0.05}


@pytest.fixture
def shards(ratings_shards):
    return ratings_shards(users=80, items=150, rows=5000, seed=4)


@pytest.fixture
def inline(inline_executor, monkeypatch):
    """Every configuration's executor runs the handler in-process; storage is local."""
    kind = type(inline_executor)

    def executors_for(settings):
        return lambda params: kind(max_concurrency=2)

    class Hook:
        def __init__(self, **kwargs):
            self.settings = ExecutorSettings()

        def get_storage(self):
            return Storage()

    monkeypatch.setattr(tune_module, "executors_for", executors_for)
    monkeypatch.setattr(triggers_module, "executors_for", executors_for)
    monkeypatch.setattr(triggers_module, "CirrusHook", Hook)
    monkeypatch.setattr(CirrusTuneOperator, "hook", property(lambda self: Hook()))


@pytest.fixture
def context(tmp_path, monkeypatch):
    """A task instance's context, and a dashboard registry of the test's own."""
    monkeypatch.setenv("AIRFLOW__CIRRUS__DASHBOARD_REGISTRY", str(tmp_path / "registry"))
    pushed = {}
    ti = SimpleNamespace(dag_id="dag", run_id="manual__1", task_id="tune", map_index=-1, xcom=pushed,
                         xcom_push=lambda key, value: pushed.__setitem__(key, value))
    return {"ti": ti}


def _operator(shards, out, **kw):
    return CirrusTuneOperator(task_id="tune", data_uri=str(shards), output_uri=str(out), model="mf",
                              search_space={"learning_rate": [0.02, 0.1]}, base=BASE, early_stopping="none",
                              concurrency=2, **kw)


def test_the_search_runs_in_the_task_and_returns_the_best_configuration(shards, tmp_path, inline, context):
    summary = _operator(shards, tmp_path / "tune").execute(context)
    assert summary["configs"] == 2 and summary["statuses"] == {"finished": 2}
    assert summary["best"]["params"]["learning_rate"] in (0.02, 0.1) and summary["best"]["model_uri"]
    results = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert summary["best"]["metric"] == min(c["metric"] for c in results["configs"])
    assert len(json.dumps(summary)) < 2000  # a small XCom; results.json has every configuration
    assert (tmp_path / "tune" / "report.html").exists()


def test_the_search_is_listed_on_the_dashboard_under_its_task_instance(shards, tmp_path, inline, context):
    op = _operator(shards, tmp_path / "tune", max_configs=1)
    op.execute(context)
    (entry,) = registry.list_runs(Storage(), str(tmp_path / "registry"))
    assert (entry.dag_id, entry.run_id, entry.task_id, entry.output) == ("dag", "manual__1", "tune",
                                                                        str(tmp_path / "tune"))
    link = CirrusDashboardLink().get_link(op, ti_key=context["ti"])
    assert link.endswith(f"/cirrus/runs/{entry.key}")
    assert context["ti"].xcom[CirrusDashboardLink().xcom_key] == link  # shown while the task runs
    op.execute(context)  # a retry keeps its entry, and so its page
    assert [e.key for e in registry.list_runs(Storage(), str(tmp_path / "registry"))] == [entry.key]


def test_deferred_the_trigger_runs_the_search_and_the_task_reports_it(shards, tmp_path, inline, context):
    op = _operator(shards, tmp_path / "tune", deferrable=True)
    trigger = triggers_module.TuneTrigger.for_run(op._config(), ExecutorSettings(), None)
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name)(**kwargs).serialize() == (classpath, kwargs)
    trigger.poll_interval_s = 0.05

    async def first():
        async for event in trigger.run():
            return event.payload

    event = asyncio.run(first())
    assert event["status"] == "success"
    assert op.execute_complete({}, event)["statuses"] == {"finished": 2}


def test_a_bad_search_fails_when_the_dag_is_parsed(tmp_path):
    with pytest.raises(ValueError, match="'colour' is not a parameter a search can vary"):
        CirrusTuneOperator(task_id="t", data_uri="d", output_uri="o", search_space={"colour": ["red"]})
    with pytest.raises(ValueError, match="strategy must be one of"):
        CirrusTuneOperator(task_id="t", data_uri="d", output_uri="o", search_space={"l2": [0]}, strategy="bayes")
