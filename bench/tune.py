"""Early stopping's saving: the same grid searched with ASHA and without, in the same run,
on generated Criteo-shaped data; total worker-seconds of each search and the test loss
of each search's best configuration.

    python -m bench.tune [--rows 200000] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import ExecutorSettings, FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.storage import Storage
from cirrus_airflow.tuning.search import Search, TuneConfig, executors_for
from cirrus_airflow.tuning.space import grid

# 12 configurations: learning rates from hopeless to good, and L2 strengths.
SPACE = {"learning_rate": [0.001, 0.01, 0.1, 0.3], "l2": [0.0, 1e-5, 1e-3]}
BASE = {"workers": 1, "epochs": 8, "eval_interval_s": 0.5, "eval_rows": 20_000}


def search(data: str, out: str, strategy: str, *, concurrency: int, grace: float, epochs: int) -> tuple[dict, float]:
    config = TuneConfig(data=data, output=out, model="lr", configs=grid(SPACE), base={**BASE, "epochs": epochs},
                        early_stopping=strategy,
                        resource="seconds", grace=grace, eta=3.0, concurrency=concurrency)
    started = time.perf_counter()
    results = Search(config, storage=Storage(), executors=executors_for(ExecutorSettings(kind="local"))).run()
    return results, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=4, help="configurations running at once")
    parser.add_argument("--grace", type=float, default=1.0, help="seconds of training before ASHA's first rung")
    parser.add_argument("--epochs", type=int, default=BASE["epochs"])
    args = parser.parse_args(argv)
    logging.getLogger("cirrus_airflow").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="cirrus-bench-tune-") as tmp:
        root = Path(tmp)
        write_synthetic_criteo(Storage(), str(root / "clicks.tsv"), rows=args.rows, seed=0)
        prep = PreprocessConfig(inputs=[str(root / "clicks.tsv")], output=str(root / "shards"), hash_bits=18,
                                workers=2, row_group_rows=4096, shard_rows=50_000)
        with LocalLambdaExecutor(function=FunctionConfig(concurrency=2)) as executor:
            run_preprocess(prep, storage=Storage(), executor=executor)
        runs = {name: search(prep.output, str(root / name), name, concurrency=args.concurrency, grace=args.grace,
                             epochs=args.epochs)
                for name in ("none", "asha")}
    full, asha = runs["none"][0], runs["asha"][0]
    print(f"\n== tune: grid of {len(full['configs'])} lr configurations (learning rate x L2), {args.rows:,} Criteo "
          f"rows, {args.epochs} epochs, {args.concurrency} at once ==  (python -m bench.tune)")
    print(f"  {'search':<22}{'worker-s':>10}{'vs full':>9}{'wall s':>8}{'stopped early':>15}{'best test loss':>16}"
          f"{'vs full':>9}")
    for name, label in (("none", "full grid"), ("asha", f"ASHA (eta 3, grace {args.grace:g} s)")):
        results, wall = runs[name]
        stopped = sum(c["status"] == "stopped_early" for c in results["configs"])
        best = results["best"]["metric"]
        print(f"  {label:<22}{results['worker_seconds_total']:>10.1f}"
              f"{results['worker_seconds_total'] / full['worker_seconds_total']:>8.0%} {wall:>7.1f}"
              f"{stopped:>15}{best:>16.4f}{best / full['best']['metric'] - 1:>+9.2%}")
    print(f"  best: full grid {full['best']['params']}, ASHA {asha['best']['params']}")


if __name__ == "__main__":
    main()
