"""CirrusPreprocessOperator's deferrable path and its Asset: the trigger drives the run
(with the real map tasks in-process), reports bad input as an event, and cancels the
fan-out when it is cancelled. The whole path inside Airflow is covered by the example
DAG's ``airflow dags test`` (tests/dags), whose preprocess task is deferrable."""

import asyncio
import threading
import importlib

import pytest
from airflow.sdk import Asset, AssetAlias

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError
from cirrus_airflow.storage import Storage
from operators import CirrusPreprocessOperator
from operators import triggers as triggers_module
from operators.preprocess import output_asset


@pytest.fixture
def executors(inline_executor, monkeypatch):
    """CirrusHook in the trigger replaced by one that makes in-process executors (listed here)."""
    made = []

    class InlineHook:
        def __init__(self, **kwargs):
            pass

        def get_executor(self):
            made.append(type(inline_executor)())
            return made[-1]

        def get_storage(self):
            return Storage()

    monkeypatch.setattr(triggers_module, "CirrusHook", InlineHook)
    return made


def _first_event(trigger):
    async def first():
        async for event in trigger.run():
            return event.payload
    return asyncio.run(first())


def _trigger(config):
    return triggers_module.PreprocessTrigger.for_run(config, ExecutorSettings(), None)


def test_the_trigger_serializes_to_an_importable_class_and_json(tmp_path):
    config = PreprocessConfig(inputs=[str(tmp_path)], output=str(tmp_path / "o"), crosses=[("C1", "C2")])
    classpath, kwargs = _trigger(config).serialize()
    module, name = classpath.rsplit(".", 1)
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    assert PreprocessConfig(**kwargs["config"]).transform() == config.transform()


def test_the_trigger_runs_the_fan_out_and_returns_the_summary(tmp_path, executors):
    write_synthetic_criteo(Storage(), str(tmp_path / "in.tsv"), rows=3000, seed=1)
    config = PreprocessConfig(inputs=[str(tmp_path / "in.tsv")], output=str(tmp_path / "out"), hash_bits=10)
    event = _first_event(_trigger(config))
    assert event["status"] == "success" and event["summary"]["rows_written"] == 3000
    op = CirrusPreprocessOperator(task_id="p", input_uris=str(tmp_path / "in.tsv"), output_uri=str(tmp_path / "out"),
                                  deferrable=True)
    assert op.execute_complete({}, event)["manifest_uri"].endswith("_manifest.json")


def test_bad_input_comes_back_as_an_event_and_fails_the_task_with_its_message(tmp_path, executors):
    config = PreprocessConfig(inputs=[str(tmp_path / "nothing-*.tsv")], output=str(tmp_path / "out"))
    event = _first_event(_trigger(config))
    assert event == {"status": "bad_input", "message": f"input {tmp_path}/nothing-*.tsv: no files match "
                                                        f"{tmp_path}/nothing-*.tsv"}
    op = CirrusPreprocessOperator(task_id="p", input_uris="x", output_uri="y")
    with pytest.raises(PreprocessError, match="no files match"):
        op.execute_complete({}, event)


def test_cancelling_the_trigger_cancels_the_invocations(tmp_path, executors, monkeypatch):
    seen = {}

    def blocking_run(config, *, storage, executor, progress):
        seen["cancelled"] = executor._cancelled.wait(10)  # a fan-out that ends when it is cancelled
        return {}

    monkeypatch.setattr(triggers_module, "run_preprocess", blocking_run)
    trigger = _trigger(PreprocessConfig(inputs=["x"], output=str(tmp_path / "o")))
    trigger.poll_interval_s = 0.05

    async def cancel_soon():
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    assert len(executors) == 1 and seen == {"cancelled": True}


def test_a_cancel_that_comes_before_the_executor_exists_still_stops_the_run(tmp_path, inline_executor, monkeypatch):
    cancel_sent, seen = threading.Event(), {}

    class SlowHook:  # the executor is made only after the trigger has been cancelled
        def __init__(self, **kwargs):
            pass

        def get_executor(self):
            assert cancel_sent.wait(10)
            return type(inline_executor)()

        def get_storage(self):
            return Storage()

    def run(config, *, storage, executor, progress):
        seen["cancelled"] = executor._cancelled.is_set()
        return {}

    monkeypatch.setattr(triggers_module, "CirrusHook", SlowHook)
    monkeypatch.setattr(triggers_module, "run_preprocess", run)
    trigger = _trigger(PreprocessConfig(inputs=["x"], output=str(tmp_path / "o")))
    trigger.poll_interval_s = 0.05

    async def cancel_at_once():
        task = asyncio.ensure_future(trigger.run().__anext__())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancel_sent.set()
        for _ in range(100):  # the driver's thread goes on until it sees the cancel
            if seen:
                break
            await asyncio.sleep(0.05)

    asyncio.run(cancel_at_once())
    assert seen == {"cancelled": True}


def test_the_output_is_declared_as_an_asset_or_through_an_alias_when_templated(tmp_path):
    fixed = CirrusPreprocessOperator(task_id="p", input_uris="in", output_uri="s3://bucket/shards/")
    assert fixed.outlets == [Asset(uri="s3://bucket/shards")]
    local = CirrusPreprocessOperator(task_id="q", input_uris="in", output_uri=str(tmp_path / "out"))
    assert local.outlets == [Asset(uri=(tmp_path / "out").as_uri())]
    templated = CirrusPreprocessOperator(task_id="r", input_uris="in", output_uri="{{ params.root }}/shards")
    assert templated.outlets == [AssetAlias("cirrus-preprocess:r")]
    assert output_asset(str(tmp_path / "x")).uri.startswith("file://")


def test_on_kill_stops_a_running_fan_out_and_leaves_no_manifest(tmp_path, inline_executor, monkeypatch):
    """The non-deferrable path: on_kill (from Airflow's SIGTERM handler) cancels the invocations
    still queued, the running ones end, and the task fails without publishing shards."""
    write_synthetic_criteo(Storage(), str(tmp_path / "in.tsv"), rows=6000, seed=2)
    executor_class = type(inline_executor)
    started = threading.Event()

    class SlowExecutor(executor_class):
        def invoke(self, event):
            started.set()
            self._cancelled.wait(10)  # a worker that is still busy when the task is killed
            return super().invoke(event)

    class InlineHook:
        def get_executor(self):
            return SlowExecutor(max_concurrency=1)

        def get_storage(self):
            return Storage()

    monkeypatch.setattr(CirrusPreprocessOperator, "hook", property(lambda self: InlineHook()))
    op = CirrusPreprocessOperator(task_id="p", input_uris=str(tmp_path / "in.tsv"),
                                  output_uri=str(tmp_path / "out"), workers=4)
    failure = {}

    def run():
        try:
            op.execute({})
        except Exception as exc:  # noqa: BLE001 - what the task would fail with
            failure["error"] = exc

    task = threading.Thread(target=run)
    task.start()
    assert started.wait(10)
    op.on_kill()
    task.join(30)
    assert not task.is_alive()
    assert "cancel" in str(failure["error"]).lower(), failure
    assert not (tmp_path / "out" / "_manifest.json").exists()
    assert not (tmp_path / "out" / "_work").exists()
