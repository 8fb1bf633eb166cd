"""The S3 path for real: a moto server on 127.0.0.1, reached by the driver through the
Amazon provider's hooks and by the local runtime's workers through the credentials
and endpoint that the Airflow connection gave them - no AWS settings in the
environment at all."""

import boto3

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import ExecutorSettings
from cirrus_airflow.hooks import CirrusHook
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.shards import read_manifest
from cirrus_airflow.training import TrainConfig, TrainingJob


def test_preprocess_and_train_over_s3_with_credentials_from_the_connection(moto_endpoint, tmp_path):
    hook = CirrusHook(aws_conn_id="moto", settings=ExecutorSettings(kind="local", concurrency=3))
    env = hook.worker_environment()
    assert env["AWS_ENDPOINT_URL_S3"] == moto_endpoint and env["AWS_ACCESS_KEY_ID"] == "moto-key"
    storage = hook.get_storage()
    storage.s3.create_bucket(Bucket="clicks")
    write_synthetic_criteo(storage, "s3://clicks/raw/day-0.tsv", rows=12_000, seed=9)
    write_synthetic_criteo(storage, "s3://clicks/raw/day-1.csv", rows=8_000, seed=10, dialect="csv")
    output = "s3://clicks/shards/"  # a trailing slash is the same folder

    with hook.get_executor() as executor:
        prep = run_preprocess(
            PreprocessConfig(inputs=["s3://clicks/raw/"], output=output, hash_bits=14, workers=3),
            storage=storage, executor=executor)
        assert prep["rows_written"] == 20_000 and prep["manifest_uri"] == "s3://clicks/shards/_manifest.json"
        summary = TrainingJob(TrainConfig(data="s3://clicks/shards", output="s3://clicks/runs/1", workers=2,
                                          epochs=2, poll_interval_s=0.2),
                              storage=storage, executor=executor).run()

    assert summary["model_uri"] == "s3://clicks/runs/1/model"
    assert summary["test_logloss"] < summary["baseline_logloss"]
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                                           aws_access_key_id="k", aws_secret_access_key="s")
            .list_objects_v2(Bucket="clicks")["Contents"]}
    assert {"shards/_manifest.json", "runs/1/model/weights.npy", "runs/1/model/model.json",
            "runs/1/metrics.jsonl", "runs/1/summary.json"} <= keys
    assert read_manifest(storage, "s3://clicks/shards").rows("train") == prep["train_rows"]


def test_ratings_and_min_count_over_s3_leave_artifacts_and_no_scratch_files(moto_endpoint, tmp_path):
    """The first pass's side files, the fitted transform's artifacts and the shuffle
    pieces all go through S3 between the local runtime's workers and the driver."""
    import gzip

    from cirrus_airflow.datasets import write_synthetic_ratings
    from cirrus_airflow.storage import Storage

    hook = CirrusHook(aws_conn_id="moto", settings=ExecutorSettings(kind="local", concurrency=2))
    storage = hook.get_storage()
    storage.s3.create_bucket(Bucket="data")
    info = write_synthetic_ratings(Storage(), str(tmp_path / "r.csv"), users=120, items=300, rows=6000, seed=2)
    storage.write_bytes("s3://data/raw/ratings.csv.gz", gzip.compress((tmp_path / "r.csv").read_bytes()))
    write_synthetic_criteo(storage, "s3://data/raw/clicks.tsv", rows=5000, seed=3)
    with hook.get_executor() as executor:
        ratings = run_preprocess(PreprocessConfig(inputs=["s3://data/raw/ratings.csv.gz"], output="s3://data/mf",
                                                  format="ratings", shard_rows=2000, row_group_rows=500),
                                 storage=storage, executor=executor)
        clicks = run_preprocess(PreprocessConfig(inputs=["s3://data/raw/clicks.tsv"], output="s3://data/lr",
                                                 min_count=3, hash_bits=12, workers=2),
                                storage=storage, executor=executor)
    assert ratings["rows_written"] == info["rows"] and clicks["rows_written"] == 5000
    keys = set(storage.list("s3://data/mf")) | set(storage.list("s3://data/lr"))
    assert not [k for k in keys if "/_work/" in k]
    assert {"s3://data/mf/transform/user-ids.parquet", "s3://data/mf/transform/item-ids.parquet",
            "s3://data/lr/transform/frequent-buckets.npy"} <= keys
    assert read_manifest(storage, "s3://data/mf").kind == "ratings"
    assert len(read_manifest(storage, "s3://data/mf").shards["train"]) == -(-ratings["train_rows"] // 2000)
