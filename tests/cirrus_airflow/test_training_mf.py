"""Matrix factorisation end to end: ratings preprocessed into shards, trained by serverless
workers against the parameter server, scored on the held-out ratings."""

import json
from pathlib import Path

import numpy as np
import pytest

from cirrus_airflow.datasets import write_synthetic_ratings
from cirrus_airflow.model_store import load_metadata, load_weights
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingError, TrainingJob

@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    root = tmp_path_factory.mktemp("mf")
    truth = write_synthetic_ratings(Storage(), str(root / "ratings.csv"), users=300, items=600, rows=40_000,
                                    rank=4, noise=0.25, seed=3)
    return root, truth


def _preprocess(inputs, out, executor, **kw):
    config = PreprocessConfig(inputs=[str(i) for i in inputs], output=str(out), format="ratings", workers=2,
                              row_group_rows=2000, shard_rows=8000, **kw)
    return run_preprocess(config, storage=Storage(), executor=executor)


def test_factorisation_learns_the_hidden_low_rank_model(ratings, tmp_path, inline_executor):
    root, truth = ratings
    prep = _preprocess([root / "ratings.csv"], tmp_path / "shards", inline_executor)
    summary = TrainingJob(TrainConfig(data=str(tmp_path / "shards"), output=str(tmp_path / "run"), model="mf",
                                      factors=8, workers=2, epochs=8, poll_interval_s=0.2),
                          storage=Storage(), executor=inline_executor).run()
    assert summary["examples"] == 8 * prep["train_rows"] and summary["test_rows"] == prep["test_rows"]
    # Far below the mean rating's error, and near the noise the hidden model put in.
    assert summary["test_rmse"] < 0.75 * summary["baseline_rmse"]
    assert summary["test_rmse"] < truth["clean_rmse"] + 0.12, (summary, truth)
    assert summary["test_mae"] < summary["test_rmse"]
    meta = load_metadata(Storage(), summary["model_uri"])
    table = load_weights(Storage(), str(Path(summary["model_uri"]) / "weights.npy"))
    assert table.shape == (meta["params"]["num_users"] + meta["params"]["num_items"], 9)
    assert meta["transform"]["user_ids"] and meta["config"]["l2"] is None and meta["config"]["factors"] == 8
    assert json.dumps(summary)


def test_a_model_on_the_wrong_shards_is_refused_with_what_to_do(ratings, tmp_path, inline_executor):
    root, _ = ratings
    _preprocess([root / "ratings.csv"], tmp_path / "shards", inline_executor)
    job = TrainingJob(TrainConfig(data=str(tmp_path / "shards"), output=str(tmp_path / "run"), model="lr", workers=2),
                      storage=Storage(), executor=inline_executor)
    with pytest.raises(TrainingError, match="model 'lr' trains on sparse shards.*choose model mf"):
        job.run()
