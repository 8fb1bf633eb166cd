"""Click-through prediction, the Cirrus way: preprocess, train on serverless workers, then
search the learning rate with many trainings at once, the hopeless ones stopped early.

Out of the box the DAG runs on a laptop: it generates a Criteo-shaped click log,
the embedded Lambda runtime does the work, and everything lands under ``root``.
To run the same DAG on AWS, set ``root`` to an ``s3://bucket/prefix`` and point your
own data at ``raw/``, set ``AIRFLOW__CIRRUS__EXECUTOR=lambda`` (the deployed
``cirrus-worker`` function), and give the ``aws_default`` connection the account's
credentials and region; see the README.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param

from operators import CirrusPreprocessOperator, CirrusSyntheticDataOperator, CirrusTrainOperator, CirrusTuneOperator

DEFAULT_ROOT = os.environ.get("CIRRUS_DEMO_ROOT", str(Path.home() / "cirrus-airflow-demo"))
DEMO_ROWS = int(os.environ.get("CIRRUS_DEMO_ROWS", "200000"))
WORKERS = int(os.environ.get("CIRRUS_DEMO_WORKERS", "4"))

with DAG(
    dag_id="cirrus_criteo_pipeline",
    description="Criteo-style CTR: preprocess into shards, train logistic regression on serverless workers, tune it",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share the shards under root: one at a time
    tags=["cirrus", "example"],
    params={"root": Param(DEFAULT_ROOT, type="string", description="folder or s3:// prefix for all data")},
    doc_md=__doc__,
) as dag:
    clicks = CirrusSyntheticDataOperator(
        task_id="generate_clicks",
        output_uri="{{ params.root }}/raw/clicks.tsv",
        rows=DEMO_ROWS,
    )
    shards = CirrusPreprocessOperator(
        task_id="preprocess",
        input_uris="{{ params.root }}/raw/clicks.tsv",
        output_uri="{{ params.root }}/shards",
        hash_bits=18,
        test_fraction=0.2,
        workers=WORKERS,
        deferrable=True,  # the fan-out is waited on by the triggerer, not in a worker slot
    )
    model = CirrusTrainOperator(
        task_id="train",
        data_uri="{{ params.root }}/shards",
        output_uri="{{ params.root }}/runs/{{ run_id | replace(':', '-') | replace('+', '_') }}",
        workers=WORKERS,
        learning_rate=0.1,
        optimizer="adagrad",
        minibatch=256,
        epochs=2,
        time_budget_s=600,
        deferrable=True,  # training is driven from the triggerer: no worker slot held while it runs
    )
    search = CirrusTuneOperator(
        task_id="tune",
        data_uri="{{ params.root }}/shards",
        output_uri="{{ params.root }}/tunes/{{ run_id | replace(':', '-') | replace('+', '_') }}",
        search_space={"learning_rate": [0.01, 0.1, 0.5]},
        base={"workers": 2, "epochs": 2, "eval_interval_s": 1.0},
        early_stopping="asha",
        grace=2.0,  # seconds of training before the first rung
        concurrency=3,
        budget_worker_seconds=3600,
        deferrable=True,
    )
    clicks >> shards >> model >> search
