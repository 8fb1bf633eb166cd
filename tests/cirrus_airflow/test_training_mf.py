"""Matrix factorisation end to end: ratings preprocessed into shards, trained by serverless
workers against the parameter server, scored on the held-out ratings."""

import json
from pathlib import Path

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


def test_the_live_evaluator_draws_a_held_out_curve_and_stops_on_the_target(ratings, tmp_path, evaluating_executor):
    root, truth = ratings
    prep = _preprocess([root / "ratings.csv"], tmp_path / "shards", evaluating_executor)
    target = truth["clean_rmse"] + 0.1
    config = TrainConfig(data=str(tmp_path / "shards"), output=str(tmp_path / "run"), model="mf", factors=8,
                         workers=2, epochs=200, learning_rate=0.01, eval_interval_s=0.1, eval_rows=3000,
                         target_loss=target, poll_interval_s=0.05)
    summary = TrainingJob(config, storage=Storage(), executor=evaluating_executor).run()
    assert summary["stopped_by"] == "target_loss" and summary["examples"] < 200 * prep["train_rows"]
    curve = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    held_out = [p for p in curve if "test_loss" in p]
    assert held_out and held_out[-1]["test_loss"] <= target < held_out[0]["test_loss"]
    assert all(p["test_rows"] == 3000 and p["test_loss"] == p["test_rmse"] for p in held_out)
    assert summary["best_test_loss"] == min(p["test_loss"] for p in held_out)
    live = [e for e in evaluating_executor.events if e["task"] == "evaluate" and "ps" in e]
    assert len(live) == len(held_out)  # one at a time, each one a point of the curve
    assert summary["test_rows"] == prep["test_rows"]  # the final evaluation: every test row, the saved model


def test_patience_stops_a_run_that_no_longer_improves(ratings, tmp_path, evaluating_executor):
    root, _ = ratings
    _preprocess([root / "ratings.csv"], tmp_path / "shards", evaluating_executor)
    config = TrainConfig(data=str(tmp_path / "shards"), output=str(tmp_path / "run"), model="mf", workers=2,
                         epochs=500, learning_rate=1e-7, eval_interval_s=0.2, eval_rows=2000, patience=2,
                         poll_interval_s=0.1)
    summary = TrainingJob(config, storage=Storage(), executor=evaluating_executor).run()
    assert summary["stopped_by"] == "patience"
    held_out = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([p for p in held_out if "test_loss" in p]) >= 3  # a first best, then two without a better one


def test_stopping_rules_need_a_live_evaluator_and_say_so(ratings, tmp_path, inline_executor):
    with pytest.raises(ValueError, match="need eval_interval_s"):
        TrainConfig(data="d", output="o", model="mf", eval_interval_s=None, target_loss=0.9).validate()
    with pytest.raises(ValueError, match="raise the executor's max_concurrency above 2"):
        TrainingJob(TrainConfig(data="d", output="o", model="mf", workers=2, patience=3), storage=Storage(),
                    executor=inline_executor)
