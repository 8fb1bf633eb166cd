"""Training speed and quality: serverless workers against the parameter server, beside
the same minibatch Adagrad run in one process over in-memory data (no server, no
Lambda: the floor of what the architecture costs), on the same shards in the same run.

    python -m bench.train [--rows 500000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.metrics import BinaryMetrics
from cirrus_airflow.models.logistic import Minibatch, predict_margins
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.shards import ShardReader, SparseRows, read_manifest
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingJob

LEARNING_RATE = 0.1
MINIBATCH = 256
ADAGRAD_INITIAL = 0.1  # the parameter server's default initial accumulator


def _load(prefix: str, split: str) -> SparseRows:
    manifest = read_manifest(Storage(), prefix)
    parts = []
    for uri in manifest.shard_uris(prefix, split):
        with ShardReader(Storage(), uri) as reader:
            parts.append(reader.read_all())
    return SparseRows.concat(parts)


def single_process(prefix: str, epochs: int) -> dict:
    """The baseline: the same model, optimizer and minibatches, in one process."""
    train, test = _load(prefix, "train"), _load(prefix, "test")
    dim = read_manifest(Storage(), prefix).feature_dim
    weights = np.zeros(dim + 1, dtype=np.float32)
    accumulator = np.full(dim + 1, ADAGRAD_INITIAL, dtype=np.float32)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(-(-len(train) // MINIBATCH))
        for b in order:
            batch = Minibatch.of(train.slice(b * MINIBATCH, min(len(train), (b + 1) * MINIBATCH)), dim)
            grad, _ = batch.gradient(weights[batch.keys])
            accumulator[batch.keys] += grad * grad
            weights[batch.keys] -= LEARNING_RATE * grad / np.sqrt(accumulator[batch.keys])
    seconds = time.perf_counter() - started
    metrics = BinaryMetrics.of(predict_margins(test, weights), test.labels)
    return {"examples_per_second": epochs * len(train) / seconds, "test_auc": metrics.auc,
            "test_logloss": metrics.log_loss}


def serverless(prefix: str, output: str, workers: int, epochs: int) -> dict:
    with LocalLambdaExecutor(function=FunctionConfig(concurrency=workers)) as executor:
        config = TrainConfig(data=prefix, output=output, workers=workers, epochs=epochs, minibatch=MINIBATCH,
                             learning_rate=LEARNING_RATE, optimizer="adagrad", poll_interval_s=0.5)
        return TrainingJob(config, storage=Storage(), executor=executor).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cirrus-bench-") as tmp:
        root = Path(tmp)
        write_synthetic_criteo(Storage(), str(root / "clicks.tsv"), rows=args.rows, seed=0)
        with LocalLambdaExecutor(function=FunctionConfig(concurrency=2)) as executor:
            run_preprocess(PreprocessConfig(inputs=[str(root / "clicks.tsv")], output=str(root / "shards"),
                                            workers=2), storage=Storage(), executor=executor)
        print(f"\n== train: logistic regression, {args.rows:,} rows, {args.epochs} epochs, "
              f"minibatch {MINIBATCH}, Adagrad ==")
        base = single_process(str(root / "shards"), args.epochs)
        rows = [("1 process, in memory", base)]
        for w in args.workers:
            rows.append((f"cirrus, {w} worker(s) + PS", serverless(str(root / "shards"), str(root / f"run{w}"),
                                                                  w, args.epochs)))
        print(f"  {'configuration':<28}{'examples/s':>12}{'vs 1 process':>14}{'test AUC':>10}{'log loss':>10}")
        for name, r in rows:
            print(f"  {name:<28}{r['examples_per_second']:>12,.0f}"
                  f"{r['examples_per_second'] / base['examples_per_second']:>13.2f}x"
                  f"{r['test_auc']:>10.4f}{r['test_logloss']:>10.4f}")
        print("  (cirrus rates include cold starts, shard reads and one round trip per minibatch)")


if __name__ == "__main__":
    main()
