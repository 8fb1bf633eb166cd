"""Batch prediction on raw rows: the same rows score as the preprocessed shards did, unknown
ids get cold-start predictions, bad rows are counted and kept aside, and the CLI says so in JSON."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirrus_airflow.datasets import write_synthetic_criteo, write_synthetic_libsvm, write_synthetic_ratings
from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.formats.ratings import map_ids
from cirrus_airflow.metrics import BinaryMetrics, RegressionMetrics
from cirrus_airflow.model_store import load_metadata, load_weights
from cirrus_airflow.models.logistic import predict_margins, sigmoid
from cirrus_airflow.models.registry import factor_model
from cirrus_airflow.predict import PredictError, run_predict
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.shards import RatingRows, ShardReader, SparseRows, read_manifest
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingJob

CLI = str(Path(sys.executable).with_name("cirrus-airflow"))


@pytest.fixture(scope="module")
def executor():
    with LocalLambdaExecutor(function=FunctionConfig(concurrency=2)) as ex:
        yield ex


def _train(executor, root: Path, model: str, **prep) -> Path:
    """Preprocess ``prep`` into ``root/shards`` and train a short run into ``root/run``."""
    config = PreprocessConfig(output=str(root / "shards"), workers=2, row_group_rows=1000, shard_rows=4000, **prep)
    run_preprocess(config, storage=Storage(), executor=executor)
    TrainingJob(TrainConfig(data=str(root / "shards"), output=str(root / "run"), model=model, workers=2, epochs=2,
                            factors=4, eval_interval_s=None, poll_interval_s=0.1),
                storage=Storage(), executor=executor).run()
    return root / "run"


@pytest.fixture(scope="module")
def clicks(tmp_path_factory, executor):
    """An lr model on Criteo TSV with rare buckets folded (a transform file to load), and
    its test rows in a file of their own, so that every one of them is in the test shards."""
    root = tmp_path_factory.mktemp("clicks")
    write_synthetic_criteo(Storage(), str(root / "all.tsv"), rows=5000, seed=7)
    lines = (root / "all.tsv").read_bytes().splitlines(keepends=True)
    (root / "train.tsv").write_bytes(b"".join(lines[:3500]))
    (root / "test.tsv").write_bytes(b"".join(lines[3500:]))
    run = _train(executor, root, "lr", inputs=[str(root / "train.tsv")], test_inputs=[str(root / "test.tsv")],
                 hash_bits=12, min_count=2)
    return root, run


@pytest.fixture(scope="module")
def ratings(tmp_path_factory, executor):
    root = tmp_path_factory.mktemp("ratings")
    write_synthetic_ratings(Storage(), str(root / "ratings.csv"), users=80, items=150, rows=5000, seed=2)
    return root, _train(executor, root, "mf", inputs=[str(root / "ratings.csv")], format="ratings")


def _shard_rows(data: Path, part: str) -> list:
    manifest = read_manifest(Storage(), str(data))
    rows = []
    for uri in manifest.shard_uris(str(data), part):
        with ShardReader(Storage(), uri) as reader:
            rows.append(reader.read_all())
    return rows


def _lr_shard_probabilities(run: Path, data: Path) -> tuple[np.ndarray, BinaryMetrics]:
    table = load_weights(Storage(), str(run / "model" / "weights.npy"))
    rows = SparseRows.concat(_shard_rows(data, "test"))
    margins = predict_margins(rows, table)
    return sigmoid(margins), BinaryMetrics.of(margins, rows.labels)


def test_lr_scores_raw_criteo_rows_exactly_as_their_test_shards(clicks, tmp_path):
    root, run = clicks
    summary = run_predict(str(run / "model"), [str(root / "test.tsv")], str(tmp_path / "out"), storage=Storage(),
                          block_bytes=64 << 10, part_rows=600)
    out = pq.read_table(tmp_path / "out")
    assert out.column_names == ["file", "line", "label", "probability"]
    assert summary["rows_read"] == summary["rows_scored"] == out.num_rows == 1500 and summary["rows_rejected"] == 0
    assert summary["parts"] > 1 and summary["model"] == "lr" and summary["format"] == "criteo"
    assert out.column("line").to_pylist() == list(range(1, 1501))  # input order, across blocks and parts
    raw_labels = [float(line.split(b"\t", 1)[0]) for line in (root / "test.tsv").read_bytes().splitlines()]
    assert out.column("label").to_pylist() == raw_labels
    expected, metrics = _lr_shard_probabilities(run, root / "shards")
    np.testing.assert_array_equal(np.sort(out.column("probability").to_numpy()), np.sort(expected))
    assert summary["logloss"] == pytest.approx(metrics.log_loss, rel=1e-12)
    assert summary["accuracy"] == metrics.accuracy and summary["auc"] == pytest.approx(metrics.auc, rel=1e-12)
    assert json.loads((tmp_path / "out" / "_summary.json").read_text()) == summary

    # The same rows gzipped, scored again into the same folder: the earlier parts are replaced, not added to.
    (root / "test.tsv.gz").write_bytes(gzip.compress((root / "test.tsv").read_bytes()))
    again = run_predict(str(run), [str(root / "test.tsv.gz")], str(tmp_path / "out"), storage=Storage(),
                        block_bytes=64 << 10)
    assert again["parts"] == 1 and sorted(p.name for p in (tmp_path / "out").glob("part-*")) == ["part-00000.parquet"]
    gz = pq.read_table(tmp_path / "out")
    assert gz.drop_columns(["file"]).equals(out.drop_columns(["file"]))
    assert set(gz.column("file").to_pylist()) == {str(root / "test.tsv.gz")}


def test_bad_rows_are_counted_and_kept_aside_with_their_line(clicks, tmp_path):
    root, run = clicks
    lines = (root / "test.tsv").read_bytes().splitlines(keepends=True)[:20]
    lines[2] = b"x" + lines[2][1:]  # line 3: a label that is no number
    lines[6] = b"1\t2\t3\n"  # line 7: too few fields
    lines.insert(10, b"\n")  # line 11: blank
    (tmp_path / "bad.tsv").write_bytes(b"".join(lines))
    summary = run_predict(str(run), [str(tmp_path / "bad.tsv")], str(tmp_path / "out"), storage=Storage())
    assert (summary["rows_read"], summary["rows_scored"], summary["rows_rejected"]) == (20, 18, 2)
    assert summary["rejected_by_reason"] == {"bad_label": 1, "wrong_field_count": 1}
    assert summary["blank_lines"] == 1
    scored = pq.read_table(tmp_path / "out").column("line").to_pylist()
    assert 3 not in scored and 7 not in scored and 11 not in scored and scored[-1] == 21
    kept = [json.loads(line) for f in sorted(Path(summary["rejected_uri"]).iterdir())
            for line in f.read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in kept] == [(3, "bad_label"), (7, "wrong_field_count")]
    assert kept[1]["text"] == "1\t2\t3" and kept[0]["source"] == str(tmp_path / "bad.tsv")


def test_mf_scores_known_ids_as_the_model_and_unknown_ones_from_what_is_known(ratings, tmp_path):
    root, run = ratings
    meta = load_metadata(Storage(), str(run / "model"))
    table = load_weights(Storage(), str(run / "model" / "weights.npy"))
    model = factor_model(meta["params"])

    # Every raw row: its ids are all known, and it scores as its shard row does.
    summary = run_predict(str(run), [str(root / "ratings.csv")], str(tmp_path / "all"), storage=Storage())
    shards = RatingRows.concat(_shard_rows(root / "shards", "train") + _shard_rows(root / "shards", "test"))
    expected = model.predict(shards.users, shards.items, table)
    out = pq.read_table(tmp_path / "all")
    np.testing.assert_array_equal(np.sort(out.column("prediction").to_numpy()), np.sort(expected))
    assert summary["rmse"] == pytest.approx(RegressionMetrics.of(expected, shards.ratings).rmse, rel=1e-9)
    assert summary["rows_unknown_user"] == summary["rows_unknown_item"] == 0 and summary["model"] == "mf"

    (tmp_path / "new.csv").write_text("userId,movieId,rating,timestamp\n"
                                      "1,10,4.0,0\n"  # both known (the first user and item of the data)
                                      "999999,10,3.0,0\n"  # a new user
                                      "1,abc,2.0,0\n"  # a new item
                                      "u-new,i-new,5,0\n"  # neither
                                      "1,10,,0\n")  # no rating: rejected
    summary = run_predict(str(run), [str(tmp_path / "new.csv")], str(tmp_path / "out"), storage=Storage())
    assert summary["rows_scored"] == 4 and summary["rejected_by_reason"] == {"bad_number": 1}
    assert (summary["rows_unknown_user"], summary["rows_unknown_item"]) == (2, 2)
    out = pq.read_table(tmp_path / "out").to_pydict()
    assert out["line"] == [2, 3, 4, 5] and out["user"] == ["1", "999999", "1", "u-new"]
    assert out["known_user"] == [True, False, True, False] and out["known_item"] == [True, True, False, False]
    users = pq.read_table(root / "shards" / meta["transform"]["user_ids"]).column("id")
    items = pq.read_table(root / "shards" / meta["transform"]["item_ids"]).column("id")
    u, i = map_ids(pa.array(["1"]), users)[0], map_ids(pa.array(["10"]), items)[0]
    user_bias, item_bias, mean = table[u, -1], table[model.num_users + i, -1], model.mean
    expected = [model.predict(np.array([u]), np.array([i]), table)[0],
                *model.clip(np.array([mean + item_bias, mean + user_bias, mean]))]
    np.testing.assert_allclose(out["prediction"], expected, rtol=1e-6)
    assert out["prediction"][0] == expected[0]
    assert summary["rmse"] == pytest.approx(np.sqrt(np.mean((np.array(expected) - [4.0, 3.0, 2.0, 5.0]) ** 2)))


def test_lr_on_libsvm_rejects_indices_outside_the_training_features(executor, tmp_path):
    write_synthetic_libsvm(Storage(), str(tmp_path / "all.svm"), rows=3000, features=60, seed=4)
    lines = (tmp_path / "all.svm").read_bytes().splitlines(keepends=True)
    (tmp_path / "train.svm").write_bytes(b"".join(lines[:2000]))
    (tmp_path / "test.svm").write_bytes(b"".join(lines[2000:]))
    run = _train(executor, tmp_path, "lr", inputs=[str(tmp_path / "train.svm")],
                 test_inputs=[str(tmp_path / "test.svm")], format="libsvm")
    (tmp_path / "extra.svm").write_bytes(b"+1 3:1 5000:1\n")
    summary = run_predict(str(run), [str(tmp_path / "test.svm"), str(tmp_path / "extra.svm")],
                          str(tmp_path / "out"), storage=Storage())
    assert summary["rows_scored"] == 1000 and summary["rejected_by_reason"] == {"index_out_of_range": 1}
    expected, _ = _lr_shard_probabilities(run, tmp_path / "shards")
    np.testing.assert_array_equal(np.sort(pq.read_table(tmp_path / "out").column("probability").to_numpy()),
                                  np.sort(expected))


def test_what_cannot_be_scored_is_a_clear_error(clicks, tmp_path):
    root, run = clicks

    def predict(model=run, inputs=(root / "test.tsv",), **kw):
        return run_predict(str(model), [str(i) for i in inputs], str(tmp_path / "out"), storage=Storage(), **kw)

    with pytest.raises(PredictError, match="no model.json under .*give the model folder of a finished training run"):
        predict(model=root / "shards")
    with pytest.raises(PredictError, match="no such file"):
        predict(inputs=[tmp_path / "missing.tsv"])
    (tmp_path / "empty.tsv").write_bytes(b"")
    with pytest.raises(PredictError, match="the input is empty"):
        predict(inputs=[tmp_path / "empty.tsv"])
    with pytest.raises(PredictError, match="--format ratings does not match this model: it was trained on criteo"):
        predict(format="ratings")
    (tmp_path / "words.tsv").write_text("\t".join(["yes"] * 40) + "\n")
    with pytest.raises(PredictError, match="all 1 were rejected \\(1 bad_label\\)"):
        predict(inputs=[tmp_path / "words.tsv"])
    assert not (tmp_path / "out" / "_summary.json").exists()


def test_cli_predict_prints_json_and_refuses_a_wrong_format_in_one_line(clicks, tmp_path):
    root, run = clicks
    args = ["predict", "--model", str(run), "--input", str(root / "test.tsv"), "--output", str(tmp_path / "out")]
    out = subprocess.run([CLI, *args, "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"rows_read", "rows_scored", "rows_rejected", "rejected_by_reason", "output", "model", "logloss",
            "accuracy"} <= set(result)
    assert result["rows_scored"] == 1500 and result["output"] == str(tmp_path / "out")
    assert "rows scored" in out.stderr  # progress went to stderr
    bad = subprocess.run([CLI, *args, "--format", "libsvm"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "trained on criteo data" in bad.stderr and "Traceback" not in bad.stderr


def test_the_model_folder_alone_scores_raw_rows(clicks, ratings, tmp_path):
    """Moved elsewhere, with the preprocessing output gone, a model still maps ids and folds rare buckets."""
    for (root, run), raw in ((clicks, "test.tsv"), (ratings, "ratings.csv")):
        before = run_predict(str(run), [str(root / raw)], str(tmp_path / "before"), storage=Storage())
        moved = tmp_path / f"model-{root.name}"
        shutil.copytree(run / "model", moved)
        (root / "shards").rename(root / "shards-away")
        try:
            after = run_predict(str(moved), [str(root / raw)], str(tmp_path / "after"), storage=Storage())
        finally:
            (root / "shards-away").rename(root / "shards")
        assert pq.read_table(tmp_path / "after").equals(pq.read_table(tmp_path / "before"))
        assert after["rows_scored"] == before["rows_scored"] > 0
