import copy
import importlib
import threading

import pytest

from cirrus_airflow.get_provider_info import get_provider_info
from cirrus_airflow.links import CirrusOutputLink
from operators import CirrusPreprocessOperator, CirrusSyntheticDataOperator, CirrusTrainOperator


def test_uri_fields_are_templated_and_parameters_checked_at_parse_time():
    assert {"input_uris", "output_uri"} <= set(CirrusPreprocessOperator.template_fields)
    assert {"data_uri", "output_uri"} <= set(CirrusTrainOperator.template_fields)
    with pytest.raises(ValueError, match="hash_bits must be between 1 and 26"):
        CirrusPreprocessOperator(task_id="p", input_uris="in", output_uri="out", hash_bits=40)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o", optimizer="adam!")
    with pytest.raises(ValueError, match=r"timeout_s must be in \(0, 900\]"):
        CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o", worker_timeout_s=3600)
    with pytest.raises(ValueError, match="rows must be at least 1"):
        CirrusSyntheticDataOperator(task_id="g", output_uri="x", rows=0)


def test_an_unknown_executor_or_function_limit_is_refused_at_parse_time():
    with pytest.raises(ValueError, match="executor must be one of"):
        CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o", serverless_executor="kubernetes")
    with pytest.raises(ValueError, match="memory_mb must be between 128 and 10240"):
        CirrusPreprocessOperator(task_id="p", input_uris="i", output_uri="o", worker_memory_mb=64)


def test_operators_deep_copy_as_airflow_does():
    op = CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o")
    clone = copy.deepcopy(op)
    assert clone.data_uri == "d" and clone is not op


def test_provider_metadata_points_at_real_classes():
    info = get_provider_info()
    assert info["name"] and info["description"]
    for group in info["operators"] + info["triggers"] + info["hooks"]:
        for module in group["python-modules"]:
            importlib.import_module(module)
    for entry in info["connection-types"]:
        module, _, cls = entry["hook-class-name"].rpartition(".")
        assert getattr(importlib.import_module(module), cls).conn_type == entry["connection-type"]
    for path in info["extra-links"] + [p["plugin-class"] for p in info["plugins"]]:
        module, _, cls = path.rpartition(".")
        assert getattr(importlib.import_module(module), cls)


def test_output_link_points_s3_outputs_at_the_console():
    op = CirrusTrainOperator(task_id="t", data_uri="d", output_uri="s3://bucket/runs/7")
    assert CirrusOutputLink().get_link(op, ti_key=None) == \
        "https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=runs/7/"
    op.output_uri = "/tmp/local"
    assert CirrusOutputLink().get_link(op, ti_key=None) == ""


def test_on_kill_cancels_from_another_thread_and_never_blocks():
    op = CirrusTrainOperator(task_id="t", data_uri="d", output_uri="o")
    held = threading.Lock()
    held.acquire()  # what the task's own thread may hold when SIGTERM arrives
    cancelled = threading.Event()
    with op._cancellable(lambda: (held.acquire(), cancelled.set())):
        op.on_kill()  # returns although the cancel must wait for the lock
        assert not cancelled.is_set()
        held.release()
        assert cancelled.wait(10)
    op.on_kill()  # nothing in flight: nothing to do
