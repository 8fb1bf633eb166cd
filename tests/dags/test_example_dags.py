"""The example DAGs: they import cleanly, and both pipelines (Criteo click-through with
logistic regression, MovieLens-style ratings with matrix factorisation) run end to end
in Airflow (``airflow dags test``) on the embedded backends."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
AIRFLOW = Path(sys.executable).with_name("airflow")


def test_dags_import_without_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS), safe_mode=False)
    assert bag.import_errors == {}
    dag = bag.dags["cirrus_criteo_pipeline"]
    assert [t.task_id for t in dag.topological_sort()] == ["generate_clicks", "preprocess", "train", "tune"]
    assert dag.params["root"]
    dag = bag.dags["cirrus_movielens_pipeline"]
    assert [t.task_id for t in dag.topological_sort()] == ["generate_ratings", "preprocess", "train"]
    assert dag.params["ratings"] == ""


@pytest.fixture
def airflow_env(tmp_path):
    home = tmp_path / "airflow"
    home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CIRRUS__EXECUTOR": "local",
        "CIRRUS_DEMO_ROOT": str(tmp_path / "data"),
        "CIRRUS_DEMO_ROWS": "40000",
        "CIRRUS_DEMO_RATINGS": "30000",
        "CIRRUS_DEMO_WORKERS": "2",
    }
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    return env, tmp_path / "data"


def test_criteo_pipeline_runs_in_airflow_and_beats_the_base_rate(airflow_env):
    env, data = airflow_env
    run = subprocess.run([str(AIRFLOW), "dags", "test", "cirrus_criteo_pipeline"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    manifest = json.loads((data / "shards" / "_manifest.json").read_text())
    assert manifest["counts"]["rows_read"] == 40_000
    (summary_file,) = (data / "runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["test_logloss"] < summary["baseline_logloss"] - 0.02
    assert summary["test_auc"] > 0.68
    assert Path(summary["model_uri"], "weights.npy").exists()
    (results_file,) = (data / "tunes").glob("*/results.json")
    results = json.loads(results_file.read_text())
    assert len(results["configs"]) == 3 and results["best"]["params"]["learning_rate"] in (0.01, 0.1, 0.5)
    assert {c["status"] for c in results["configs"]} <= {"finished", "stopped_early"}


def test_movielens_pipeline_runs_in_airflow_and_beats_the_mean_rating(airflow_env):
    env, data = airflow_env
    run = subprocess.run([str(AIRFLOW), "dags", "test", "cirrus_movielens_pipeline"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-5000:]
    manifest = json.loads((data / "ratings-shards" / "_manifest.json").read_text())
    assert manifest["kind"] == "ratings" and manifest["counts"]["rows_read"] == 30_000
    (summary_file,) = (data / "mf-runs").glob("*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["model"] == "mf" and summary["test_rmse"] < 0.9 * summary["baseline_rmse"]
