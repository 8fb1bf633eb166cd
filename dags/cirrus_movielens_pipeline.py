"""Recommendations, the Cirrus way: ratings into shards, then matrix factorisation on
serverless workers.

Out of the box the DAG runs on a laptop: it generates MovieLens-style ratings
(``userId,movieId,rating,timestamp``) from a hidden low-rank model, the embedded Lambda
runtime does the work, and everything lands under ``root``. To train on real ratings,
set ``ratings`` to their URI (a MovieLens ``ratings.csv``, or any user/item/rating
file); the generated file is then left unused. The model keeps the id mappings, so
predictions take raw user and item ids. To run on AWS, see the Criteo pipeline's notes.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, Param

from operators import CirrusPreprocessOperator, CirrusSyntheticDataOperator, CirrusTrainOperator

DEFAULT_ROOT = os.environ.get("CIRRUS_DEMO_ROOT", str(Path.home() / "cirrus-airflow-demo"))
DEMO_ROWS = int(os.environ.get("CIRRUS_DEMO_RATINGS", "100000"))
WORKERS = int(os.environ.get("CIRRUS_DEMO_WORKERS", "4"))

with DAG(
    dag_id="cirrus_movielens_pipeline",
    description="MovieLens-style ratings: preprocess into shards, train matrix factorisation on serverless workers",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # runs share the shards under root: one at a time
    tags=["cirrus", "example"],
    params={
        "root": Param(DEFAULT_ROOT, type="string", description="folder or s3:// prefix for all data"),
        "ratings": Param("", type="string",
                         description="a ratings file to train on; empty: the generated ratings under root"),
    },
    doc_md=__doc__,
) as dag:
    ratings = CirrusSyntheticDataOperator(
        task_id="generate_ratings",
        kind="ratings",
        output_uri="{{ params.root }}/raw/ratings.csv",
        rows=DEMO_ROWS,
    )
    shards = CirrusPreprocessOperator(
        task_id="preprocess",
        input_uris="{{ params.ratings or params.root ~ '/raw/ratings.csv' }}",
        output_uri="{{ params.root }}/ratings-shards",
        format="ratings",
        test_fraction=0.2,
        workers=WORKERS,
        deferrable=True,
    )
    model = CirrusTrainOperator(
        task_id="train",
        data_uri="{{ params.root }}/ratings-shards",
        output_uri="{{ params.root }}/mf-runs/{{ run_id | replace(':', '-') | replace('+', '_') }}",
        model="mf",
        factors=16,
        workers=WORKERS,
        learning_rate=0.1,
        optimizer="adagrad",
        l2=0.2,
        minibatch=256,
        epochs=10,
        time_budget_s=600,
        deferrable=True,  # training is driven from the triggerer: no worker slot held while it runs
    )
    ratings >> shards >> model
