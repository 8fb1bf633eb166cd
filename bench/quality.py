"""Quality on the real data in ``../shared/data``: logistic regression on a9a (accuracy on
a9a.t, target 0.848) and matrix factorisation on MovieLens small (held-out RMSE on a 20%
split, target 0.88), each preprocessed and trained end to end on the local Lambda
runtime with the defaults. Rows whose data is absent are skipped.

    python -m bench.quality [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingJob

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WORKERS = 2


def _a9a(data: Path, root: Path) -> tuple[PreprocessConfig, TrainConfig]:
    prep = PreprocessConfig(inputs=[str(data / "a9a")], test_inputs=[str(data / "a9a.t")], format="libsvm",
                            num_features=123, output=str(root / "a9a"), workers=WORKERS, row_group_rows=2048)
    return prep, TrainConfig(data=prep.output, output=str(root / "a9a-run"), model="lr", workers=WORKERS, epochs=5)


def _movielens(data: Path, root: Path) -> tuple[PreprocessConfig, TrainConfig]:
    prep = PreprocessConfig(inputs=[str(data / "movielens-small" / "ratings.csv")], format="ratings",
                            test_fraction=0.2, output=str(root / "ml"), workers=WORKERS)
    return prep, TrainConfig(data=prep.output, output=str(root / "ml-run"), model="mf", workers=WORKERS, epochs=10)


# (name, files that must exist, configs, metric, target, whether lower is better)
CASES = (
    ("a9a, lr", ("a9a", "a9a.t"), _a9a, "test_accuracy", 0.848, False),
    ("MovieLens small, mf", ("movielens-small/ratings.csv",), _movielens, "test_rmse", 0.88, True),
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the folder holding a9a and movielens-small")
    args = parser.parse_args(argv)
    print(f"\n== quality on real data ({args.data}), defaults, {WORKERS} workers ==  (python -m bench.quality)")
    print(f"  {'data, model':<22}{'metric':>15}{'value':>9}{'target':>9}{'met':>6}{'seconds':>9}{'examples/s':>12}")
    with tempfile.TemporaryDirectory(prefix="cirrus-quality-") as tmp, \
            LocalLambdaExecutor(function=FunctionConfig(concurrency=WORKERS + 1, memory_mb=2048)) as executor:
        for name, files, configs, metric, target, lower in CASES:
            if not all((args.data / f).exists() for f in files):
                print(f"  {name:<22}  skipped: {', '.join(files)} not under {args.data}")
                continue
            prep, train = configs(args.data, Path(tmp))
            started = time.perf_counter()
            run_preprocess(prep, storage=Storage(), executor=executor)
            summary = TrainingJob(train, storage=Storage(), executor=executor).run()
            value = summary[metric]
            met = value <= target if lower else value >= target
            print(f"  {name:<22}{metric:>15}{value:>9.4f}{target:>9.3f}{'yes' if met else 'NO':>6}"
                  f"{time.perf_counter() - started:>9.1f}{summary['examples_per_second']:>12,.0f}")
    print("  seconds: preprocessing and training end to end, cold starts included.")


if __name__ == "__main__":
    main()
