"""CirrusTrainOperator's deferrable path: the trigger drives the whole run (fan-out, live
evaluation, its own parameter server) on the triggerer, returns the summary as an event,
keeps the server's token out of its kwargs, and stops workers and server when cancelled.
The path inside Airflow is covered by the example DAGs' ``airflow dags test`` (tests/dags)."""

import asyncio
import importlib
import json
import threading

import pytest

from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingError
from operators import CirrusTrainOperator
from operators import triggers as triggers_module


@pytest.fixture
def shards(ratings_shards):
    return ratings_shards()


@pytest.fixture
def executors(inline_executor, monkeypatch):
    """CirrusHook in the trigger replaced by one that makes in-process executors (listed here)."""
    made = []

    class InlineHook:
        def __init__(self, **kwargs):
            pass

        def get_executor(self):
            made.append(type(inline_executor)(max_concurrency=3))
            return made[-1]

        def get_storage(self):
            return Storage()

    monkeypatch.setattr(triggers_module, "CirrusHook", InlineHook)
    return made


def _trigger(config: TrainConfig, ps_conn_id=None):
    trigger = triggers_module.TrainTrigger.for_run(config, ExecutorSettings(), None, ps_conn_id)
    trigger.poll_interval_s = 0.05
    return trigger


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload
    return asyncio.run(first())


def test_the_trigger_serializes_without_the_servers_secrets(tmp_path):
    config = TrainConfig(data=str(tmp_path), output=str(tmp_path / "o"), model="mf", target_loss=0.9,
                         ps_address="10.0.0.5:7000", ps_token="s3cret")
    classpath, kwargs = _trigger(config, ps_conn_id="my_ps").serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert "s3cret" not in json.dumps(kwargs) and kwargs["ps_conn_id"] == "my_ps"
    assert TrainConfig(**kwargs["config"]) == TrainConfig(data=str(tmp_path), output=str(tmp_path / "o"), model="mf",
                                                          target_loss=0.9)


def test_the_trigger_trains_and_the_task_resumes_with_the_summary(shards, tmp_path, executors, caplog):
    config = TrainConfig(data=str(shards), output=str(tmp_path / "run"), model="mf", factors=4, workers=2,
                         epochs=30, eval_interval_s=0.1, poll_interval_s=0.05)
    with caplog.at_level("INFO", logger="airflow.triggers"):
        event = _first_event(_trigger(config))
    assert event["status"] == "success", event
    assert event["summary"]["examples"] > 0 and event["summary"]["test_rmse"] < event["summary"]["baseline_rmse"]
    op = CirrusTrainOperator(task_id="t", data_uri=str(shards), output_uri=str(tmp_path / "run"), model="mf",
                             deferrable=True)
    assert op.execute_complete({}, event)["model_uri"] == event["summary"]["model_uri"]


def test_a_failed_run_comes_back_as_an_event_and_fails_the_task(tmp_path, executors):
    event = _first_event(_trigger(TrainConfig(data=str(tmp_path / "nothing"), output=str(tmp_path / "run"),
                                              workers=2)))
    assert event["status"] in ("bad_input", "failed") and "_manifest.json" in event["message"]
    op = CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o")
    with pytest.raises((ValueError, TrainingError), match="_manifest.json"):
        op.execute_complete({}, event)


def test_cancelling_the_trigger_stops_the_workers_and_the_server(shards, tmp_path, executors):
    config = TrainConfig(data=str(shards), output=str(tmp_path / "run"), model="mf", workers=2, epochs=100_000,
                         eval_interval_s=None, poll_interval_s=0.05, worker_silence_s=2)
    trigger = _trigger(config)
    done = threading.Event()
    original = trigger._run
    trigger._run = lambda run, points: (original(run, points), done.set())[0]

    async def cancel_when_training():
        task = asyncio.ensure_future(trigger.run().__anext__())
        for _ in range(200):
            await asyncio.sleep(0.05)
            if (tmp_path / "run" / "_progress").exists():
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(done.wait, 30)

    asyncio.run(cancel_when_training())
    assert len(executors) == 1 and executors[0]._cancelled.is_set()
    assert not (tmp_path / "run" / "summary.json").exists()
    assert (tmp_path / "run" / "_attempt.json").exists()  # a retry resumes it
