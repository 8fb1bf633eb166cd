"""The ``cirrus-airflow`` command line: the operators' work without Airflow.

Each subcommand mirrors an operator, prints progress on stderr while it works and a
short table at the end; ``--json`` puts one JSON object on the last line of stdout
for scripts. Bad input exits with status 2 and a one-line message, a failed run
with status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cirrus_airflow.executor import ExecutorSettings, InvocationError, ServerlessExecutor
from cirrus_airflow.executor.settings import EXECUTOR_ENV, EXECUTORS, default_executor_kind
from cirrus_airflow.numeric import NORMALIZERS
from cirrus_airflow.preprocess import (
    DEFAULT_TEST_FRACTION,
    FORMATS,
    PreprocessConfig,
    PreprocessError,
    run_preprocess,
)
from cirrus_airflow.report import format_search, format_table, progress_line
from cirrus_airflow.storage import Storage, StorageError, join
from cirrus_airflow.transforms.sparse import INDEX_BASES
from cirrus_airflow.transforms.tabular import MISSING_MODES
from cirrus_airflow.models.registry import DEFAULT_L2, MODELS
from cirrus_airflow.tuning.early_stopping import STRATEGIES
from cirrus_airflow.tuning.search import RESOURCES
from cirrus_airflow.training import OPTIMIZERS, TrainConfig, TrainingError, TrainingJob
from ps_service.serve import build_parser as ps_parser
from ps_service.serve import run as ps_run

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class _Progress:
    """A one-line progress bar on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._open = False

    def stage(self, stage: str, done: int, total: int) -> None:
        if self.tty:
            filled = int(30 * done / max(1, total))
            sys.stderr.write(f"\r{stage:<12} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            self._open = done < total
            if not self._open:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"{stage}: {done}/{total}\n")
        sys.stderr.flush()

    def line(self, text: str) -> None:
        if self.tty:
            sys.stderr.write(f"\r{text:<70}")
            self._open = True
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self._open:
            sys.stderr.write("\n")
            self._open = False


def _executor(args: argparse.Namespace) -> ServerlessExecutor:
    return ExecutorSettings(kind=args.executor, function_name=args.function_name, memory_mb=args.worker_memory,
                            timeout_s=args.worker_timeout, concurrency=args.concurrency).build()


def _add_executor_args(p: argparse.ArgumentParser, *, concurrency: bool = True) -> None:
    g = p.add_argument_group("serverless executor")
    g.add_argument("--executor", choices=EXECUTORS, default=default_executor_kind(),
                   help=f"local: embedded Lambda runtime; lambda: a deployed function (default: %(default)s, "
                        f"from {EXECUTOR_ENV})")
    g.add_argument("--function-name", default="cirrus-worker", help="Lambda function to invoke")
    g.add_argument("--worker-memory", type=int, default=1024, metavar="MB", help="memory of a worker")
    g.add_argument("--worker-timeout", type=float, default=900.0, metavar="S", help="time limit of one invocation")
    if concurrency:
        g.add_argument("--concurrency", type=int, default=8, help="invocations in flight at once")


def _preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        inputs=args.input, output=args.output, format=args.format, test_inputs=args.test_input or [],
        hash_bits=args.hash_bits, hash_seed=args.hash_seed, log_transform=args.log_counts,
        normalize=args.normalize, missing=args.missing, signed_hash=args.signed_hash,
        crosses=[_pair(c, "--cross") for c in args.cross or []], min_count=args.min_count,
        index_base=args.index_base, num_features=args.num_features,
        columns=tuple(_names(args.columns, 3, "--columns")) if args.columns else None,
        schema=_schema(args),
        test_fraction=args.test_fraction, split_seed=args.split_seed, shard_rows=args.shard_rows,
        workers=args.workers, row_group_rows=args.row_group_rows, max_rejected_fraction=args.max_rejected_fraction,
    )


def _names(text: str, count: int, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if len(names) != count or not all(names):
        raise ValueError(f"{flag} takes {count} comma-separated column names, got {text!r}")
    return names


def _schema(args: argparse.Namespace) -> dict | None:
    if not (args.label or args.numeric or args.categorical):
        return None
    split = (lambda text: [n.strip() for n in text.split(",") if n.strip()] if text else [])
    return {"label": args.label or "", "numeric": split(args.numeric), "categorical": split(args.categorical)}


def _pair(text: str, flag: str) -> tuple[str, str]:
    a, b = _names(text, 2, flag)
    return a, b


def _train_config(args: argparse.Namespace) -> TrainConfig:
    token = Path(args.ps_token_file).read_text().strip() if args.ps_token_file else None
    return TrainConfig(
        data=args.data, output=args.output, model=args.model, workers=args.workers,
        learning_rate=args.learning_rate, optimizer=args.optimizer, l2=args.l2, factors=args.factors,
        minibatch=args.minibatch,
        epochs=args.epochs, time_budget_s=args.time_budget, seed=args.seed, target_loss=args.target_loss,
        patience=args.patience, eval_interval_s=args.eval_interval or None, eval_rows=args.eval_rows,
        checkpoint_interval_s=args.checkpoint_interval,
        handover_margin_s=args.handover_margin, ps_address=args.ps_address, ps_token=token,
        ps_shards=args.ps_shards,
    )


def _run_preprocess(config: PreprocessConfig, args: argparse.Namespace, progress: _Progress) -> dict:
    config.validate()
    with _executor(args) as executor:
        return run_preprocess(config, storage=Storage(), executor=executor, progress=progress.stage)


def _run_train(config: TrainConfig, args: argparse.Namespace, progress: _Progress) -> dict:
    def show(point: dict) -> None:
        progress.line(f"train  {progress_line(point)}")

    with _executor(args) as executor:
        job = TrainingJob(config, storage=Storage(), executor=executor, progress=show)
        try:
            return job.run()
        except KeyboardInterrupt:
            job.cancel()
            raise


def cmd_preprocess(args: argparse.Namespace, progress: _Progress) -> dict:
    return _run_preprocess(_preprocess_config(args), args, progress)


def cmd_train(args: argparse.Namespace, progress: _Progress) -> dict:
    return _run_train(_train_config(args), args, progress)


def cmd_predict(args: argparse.Namespace, progress: _Progress) -> dict:
    from cirrus_airflow.predict import run_predict

    return run_predict(args.model, args.input, args.output, storage=Storage(), format=args.format,
                       progress=progress.line)


def _tune_configs(args: argparse.Namespace) -> list[dict]:
    from cirrus_airflow.tuning.space import grid, parse_assignment, random_search

    grids = dict(parse_assignment(g) for g in args.grid or [])
    randoms = dict(parse_assignment(r) for r in args.random or [])
    strategy = args.strategy or ("random" if randoms else "grid")
    if strategy == "grid":
        if randoms:
            raise ValueError("--random needs --strategy random")
        return grid({name: values.split(",") for name, values in grids.items()})
    if grids:
        raise ValueError("--grid needs --strategy grid (give random parameters with --random)")
    return random_search(randoms, samples=args.samples, seed=args.seed)


def cmd_tune(args: argparse.Namespace, progress: _Progress) -> dict:
    from cirrus_airflow.tuning.search import Search, TuneConfig, executors_for

    base = {"workers": args.workers, "epochs": args.epochs, "eval_interval_s": args.eval_interval,
            "minibatch": args.minibatch}
    config = TuneConfig(data=args.data, output=args.output, model=args.model, configs=_tune_configs(args), base=base,
                        early_stopping=args.early_stopping, resource=args.resource, grace=args.grace, eta=args.eta,
                        concurrency=args.concurrency, max_configs=args.max_configs,
                        budget_worker_seconds=args.budget_worker_seconds, budget_dollars=args.budget_dollars)

    def show(point: dict) -> None:
        progress.line(f"tune  {point['config']}  {progress_line(point)}")

    settings = ExecutorSettings(kind=args.executor, function_name=args.function_name, memory_mb=args.worker_memory,
                                timeout_s=args.worker_timeout)
    search = Search(config, storage=Storage(), executors=executors_for(settings), progress=show)
    try:
        results = search.run()
    except KeyboardInterrupt:
        search.cancel()
        raise
    return _search_summary(results)


def cmd_tune_kill(args: argparse.Namespace, progress: _Progress) -> dict:
    from cirrus_airflow.tuning.layout import request_kill

    return {"kill_request": request_kill(Storage(), args.run, args.config)}


def cmd_generate(args: argparse.Namespace, progress: _Progress) -> dict:
    from cirrus_airflow.datasets import write_synthetic_criteo

    progress.line(f"generating {args.rows:,} rows")
    return write_synthetic_criteo(Storage(), args.output, rows=args.rows, seed=args.seed, dialect=args.dialect)


def cmd_demo(args: argparse.Namespace, progress: _Progress) -> dict:
    """Generate click data, preprocess it and train on it, all on embedded backends."""
    from cirrus_airflow.datasets import write_synthetic_criteo

    root = args.workdir or tempfile.mkdtemp(prefix="cirrus-demo-")
    raw = join(root, "raw", "clicks.tsv")
    progress.line(f"generating {args.rows:,} Criteo-shaped rows in {raw}")
    write_synthetic_criteo(Storage(), raw, rows=args.rows, seed=args.seed)
    args.executor = "local"
    prep = PreprocessConfig(inputs=[raw], output=join(root, "shards"), workers=args.workers)
    prep_summary = _run_preprocess(prep, args, progress)
    progress.close()
    print(format_table(prep_summary), file=sys.stderr)
    train = TrainConfig(data=join(root, "shards"), output=join(root, "run"), workers=args.workers,
                        epochs=args.epochs, seed=args.seed)
    return _run_train(train, args, progress)


def cmd_report(args: argparse.Namespace, progress: _Progress) -> dict:
    storage = Storage()
    for name, shown in (("summary.json", lambda doc: doc), ("results.json", _search_summary)):
        try:
            return shown(json.loads(storage.read_text(join(args.run, name))))
        except StorageError:
            continue
    raise StorageError(f"no summary.json or results.json under {args.run}: is it the output of a finished training "
                       "run or search?")


def _search_summary(results: dict) -> dict:
    """A search's results without each configuration's whole summary and curve."""
    return {**results, "configs": [{k: c[k] for k in ("id", "params", "status", "metric", "worker_seconds",
                                                      "cost_usd", "model_uri")} for c in results["configs"]],
            "best": None if results["best"] is None else {k: v for k, v in results["best"].items()
                                                          if k not in ("summary", "curve")}}


def cmd_ps_serve(args: argparse.Namespace, progress: _Progress) -> None:
    code = ps_run(args)
    if code:
        raise SystemExit(code)


def cmd_lambda_serve(args: argparse.Namespace, progress: _Progress) -> None:
    import signal
    import threading

    from cirrus_airflow.executor import FunctionConfig, LocalLambdaRuntime

    function = FunctionConfig(memory_mb=args.worker_memory, timeout_s=args.worker_timeout, concurrency=args.concurrency)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with LocalLambdaRuntime({args.function_name: function}, host=args.host, port=args.port) as runtime:
        print(f"serving function {args.function_name!r} on {runtime.endpoint_url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cirrus-airflow", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help: str, json_out: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if json_out:
            p.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
        return p

    p = command("preprocess", cmd_preprocess, "turn raw data into Parquet shards and a manifest")
    p.add_argument("--input", action="append", required=True, metavar="URI",
                   help="input file, folder/S3 prefix or glob (*, ?, [...]; quote it so that the shell leaves "
                        "it alone: 'data/day_*.tsv'); .gz files are decompressed (repeatable)")
    p.add_argument("--test-input", action="append", metavar="URI",
                   help="held-out rows from separate files instead of --test-fraction (repeatable)")
    p.add_argument("--output", required=True, metavar="URI", help="output folder")
    p.add_argument("--format", choices=FORMATS, default="criteo")
    p.add_argument("--normalize", choices=NORMALIZERS, default="minmax",
                   help="scale numeric features (libsvm: minmax divides by the largest |x|, standard by the "
                        "standard deviation, so that zeros stay zeros)")
    g = p.add_argument_group("click data (criteo)")
    g.add_argument("--hash-bits", type=int, default=18, metavar="N", help="2**N hashed features")
    g.add_argument("--hash-seed", type=int, default=0)
    g.add_argument("--signed-hash", action="store_true", help="hashed features are +1 or -1 by a hash bit")
    g.add_argument("--cross", action="append", metavar="A,B",
                   help="also hash the pair of categorical columns A and B, e.g. C1,C2 (repeatable)")
    g.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="fold categorical buckets seen fewer than N times in training into a rare bucket")
    g.add_argument("--log-counts", action=argparse.BooleanOptionalAction, default=True,
                   help="log(1+x)-transform numeric columns")
    g.add_argument("--missing", choices=MISSING_MODES, default="indicator",
                   help="a missing number as an indicator feature, or imputed with the training mean")
    g = p.add_argument_group("LIBSVM")
    g.add_argument("--index-base", choices=INDEX_BASES, default="auto",
                   help="0- or 1-based indices (auto: 0-based if any row uses index 0)")
    g.add_argument("--num-features", type=int, metavar="N", help="rows with a larger index are rejected")
    g = p.add_argument_group("csv and parquet (the columns to read)")
    g.add_argument("--label", metavar="NAME", help="the 0/1 label column")
    g.add_argument("--numeric", metavar="A,B,...", help="numeric columns")
    g.add_argument("--categorical", metavar="A,B,...", help="categorical columns (hashed)")
    g = p.add_argument_group("ratings")
    g.add_argument("--columns", metavar="USER,ITEM,RATING", help="column names, if the header's are unusual")
    g = p.add_argument_group("split and shards")
    g.add_argument("--test-fraction", type=float, metavar="F",
                   help=f"held-out share, chosen by a hash of the row (default {DEFAULT_TEST_FRACTION})")
    g.add_argument("--split-seed", type=int, default=0)
    g.add_argument("--shard-rows", type=int, default=250_000, help="target rows per output shard")
    g.add_argument("--row-group-rows", type=int, default=4096, help="rows a training worker reads at once")
    g.add_argument("--workers", type=int, default=4, help="minimum number of parallel splits")
    g.add_argument("--max-rejected-fraction", type=float, default=0.01)
    _add_executor_args(p)

    p = command("train", cmd_train, "train a model on preprocessed shards with serverless workers")
    p.add_argument("--data", required=True, metavar="URI", help="preprocessing output (has _manifest.json)")
    p.add_argument("--output", required=True, metavar="URI", help="folder for the model and metrics")
    p.add_argument("--model", choices=MODELS, default="lr",
                   help="lr: logistic regression on sparse shards; mf: matrix factorisation on ratings shards")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adagrad")
    p.add_argument("--l2", type=float, default=None,
                   help=f"L2 strength, applied on the server (default: {DEFAULT_L2['lr']} for lr, "
                        f"{DEFAULT_L2['mf']} for mf)")
    p.add_argument("--factors", type=int, default=16, metavar="K", help="mf: factors per user and item")
    p.add_argument("--minibatch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--time-budget", type=float, default=None, metavar="S")
    p.add_argument("--target-loss", type=float, default=None, metavar="X",
                   help="stop once the live held-out loss (lr: log loss, mf: RMSE) is at most X")
    p.add_argument("--patience", type=int, default=None, metavar="N",
                   help="stop after N live evaluations in a row without a new best held-out loss")
    p.add_argument("--eval-interval", type=float, default=5.0, metavar="S",
                   help="seconds between live held-out evaluations (0: only at the end)")
    p.add_argument("--eval-rows", type=int, default=50_000, metavar="N", help="test rows a live evaluation scores")
    p.add_argument("--checkpoint-interval", type=float, default=30.0, metavar="S",
                   help="checkpoint the model every S seconds; running the same command again resumes "
                        "an unfinished run")
    p.add_argument("--handover-margin", type=float, default=10.0, metavar="S",
                   help="hand over to a fresh invocation this long before the worker's time limit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ps-address", default=None, metavar="HOST:PORT[,HOST:PORT...]",
                   help="use this parameter server (a sharded group: its addresses, comma-separated)")
    p.add_argument("--ps-shards", type=int, default=1, metavar="N",
                   help="without --ps-address, start a parameter server of N processes")
    p.add_argument("--ps-token-file", default=None, metavar="F", help="file holding that server's token")
    _add_executor_args(p)

    p = command("predict", cmd_predict, "score raw rows in batch with a trained model")
    p.add_argument("--model", required=True, metavar="URI",
                   help="the model folder of a training run (<run>/model), or the run's output folder")
    p.add_argument("--input", action="append", required=True, metavar="URI",
                   help="rows to score: a file, folder/S3 prefix or glob, as for preprocess; .gz files are "
                        "decompressed (repeatable)")
    p.add_argument("--output", required=True, metavar="URI",
                   help="output folder: the predictions as part-NNNNN.parquet files in input order (read the "
                        "folder as one Parquet data set), rows that could not be scored under _rejected/, and "
                        "_summary.json, written last")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="how the input is written (default: as the model's training data was)")

    p = command("tune", cmd_tune, "search hyperparameters: many trainings at once, hopeless ones stopped early "
                                  "('tune kill RUN [CONFIG]' stops a running search's configuration)")
    p.add_argument("--data", required=True, metavar="URI", help="preprocessing output (has _manifest.json)")
    p.add_argument("--output", required=True, metavar="URI", help="folder for every configuration and results.json")
    p.add_argument("--model", choices=MODELS, default="lr")
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2,...", help="values of a parameter (repeatable)")
    p.add_argument("--random", action="append", metavar="NAME=DIST",
                   help="a parameter's distribution: loguniform:LO:HI, uniform:LO:HI, int:LO:HI or choice:A,B "
                        "(repeatable)")
    p.add_argument("--samples", type=int, default=10, metavar="N", help="random configurations to draw")
    p.add_argument("--strategy", choices=("grid", "random"), default=None,
                   help="default: random if --random is given, else grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random samples")
    p.add_argument("--early-stopping", choices=STRATEGIES, default="asha")
    p.add_argument("--resource", choices=RESOURCES, default="seconds",
                   help="what the early-stopping rungs count: training seconds or examples")
    p.add_argument("--grace", type=float, default=5.0, help="resource of the first rung (or before the median rule)")
    p.add_argument("--eta", type=float, default=3.0, help="ASHA's reduction factor")
    p.add_argument("--concurrency", type=int, default=4, metavar="C", help="configurations running at once")
    p.add_argument("--max-configs", type=int, default=None, metavar="N")
    p.add_argument("--budget-worker-seconds", type=float, default=None, metavar="S")
    p.add_argument("--budget-dollars", type=float, default=None, metavar="USD")
    p.add_argument("--workers", type=int, default=2, help="workers of each configuration (unless searched)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--minibatch", type=int, default=256)
    p.add_argument("--eval-interval", type=float, default=2.0, metavar="S",
                   help="seconds between live held-out evaluations, what early stopping decides on")
    _add_executor_args(p, concurrency=False)  # each configuration's executor: its workers and its evaluator

    p = command("generate", cmd_generate, "write a synthetic Criteo-format data set")
    p.add_argument("--output", required=True, metavar="URI")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dialect", choices=("tsv", "csv"), default="tsv")

    p = command("demo", cmd_demo, "generate, preprocess and train end to end on embedded backends")
    p.add_argument("--workdir", default=None, metavar="DIR", help="where to put the data (default: a temp dir)")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    _add_executor_args(p)

    p = command("report", cmd_report, "show the summary of a finished training run or search")
    p.add_argument("run", metavar="URI", help="the output folder of a training run or of a search")

    ps = sub.add_parser("ps", help="the parameter server").add_subparsers(dest="ps_command", required=True)
    p = ps.add_parser("serve", help="run a parameter server (or a sharded group) in the foreground",
                      parents=[ps_parser(add_help=False)])
    p.set_defaults(func=cmd_ps_serve, json=False)

    lam = sub.add_parser("lambda", help="the embedded Lambda runtime").add_subparsers(dest="lambda_command", required=True)
    p = lam.add_parser("serve", help="serve the Lambda Invoke API on loopback for the worker bundle")
    p.set_defaults(func=cmd_lambda_serve, json=False)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--function-name", default="cirrus-worker")
    p.add_argument("--worker-memory", type=int, default=1024, metavar="MB")
    p.add_argument("--worker-timeout", type=float, default=900.0, metavar="S")
    p.add_argument("--concurrency", type=int, default=8)
    return parser


def _tune_kill_parser() -> argparse.ArgumentParser:
    """``tune kill RUN [CONFIG]``, which lives beside ``tune --data ...``."""
    parser = argparse.ArgumentParser(prog="cirrus-airflow tune kill",
                                     description="stop one configuration of a running search, or all of it")
    parser.add_argument("run", metavar="RUN", help="the search's output folder")
    parser.add_argument("config", nargs="?", default=None, metavar="CONFIG", help="a configuration id (default: all)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.set_defaults(func=cmd_tune_kill, command="tune kill")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    kill = argv[:2] == ["tune", "kill"]
    args = _tune_kill_parser().parse_args(argv[2:]) if kill else build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    progress = _Progress()
    try:
        result: Any = args.func(args, progress)
    except (ValueError, PreprocessError, StorageError) as exc:
        progress.close()
        print(f"cirrus-airflow {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (TrainingError, InvocationError) as exc:
        progress.close()
        print(f"cirrus-airflow {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        progress.close()
        print(f"cirrus-airflow {args.command}: interrupted", file=sys.stderr)
        return 130
    progress.close()
    if result is None:
        return 0
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_search(result) if "configs" in result else format_table(result) if "rows_read" in result
              or "test_auc" in result or "model_uri" in result else json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
