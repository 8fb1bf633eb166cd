import importlib
import subprocess
import sys

import pytest

from lambda_pkg.handler import TASKS, handler


@pytest.mark.parametrize("event, message", [
    ({}, "with a 'task' key"),
    ([], "with a 'task' key"),
    ({"task": "nope"}, "unknown task 'nope'"),
    ({"task": "train.worker", "model": "svm"}, "model must be one of .* got 'svm'"),
    ({"task": "evaluate", "model": "svm"}, "model must be one of .* got 'svm'"),
    ({"task": "preprocess.stats", "format": "xml"}, "format must be one of .* got 'xml'"),
])
def test_bad_events_say_what_is_wrong(event, message):
    with pytest.raises(ValueError, match=message):
        handler(event, None)


def test_the_lambda_bundle_and_the_parameter_server_never_import_airflow():
    code = (
        "import sys, lambda_pkg.handler, lambda_pkg.preprocess, lambda_pkg.train_worker, lambda_pkg.evaluate,"
        " ps_service.server, ps_service.client, ps_service.serve;"
        "bad = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_names_a_function_of_the_bundle(task):
    module, _, function = TASKS[task].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_a_training_worker_does_not_import_the_preprocessing_code():
    """Its cold start is on the critical path of every run's start."""
    code = ("import sys, lambda_pkg.handler, lambda_pkg.train_worker;"
            "print(sorted(m for m in ('lambda_pkg.preprocess', 'cirrus_airflow.input_formats') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
