"""Training speed and time to a target loss: serverless workers against the parameter
server, beside the same minibatch Adagrad run in one process over in-memory data (no
server, no Lambda: the floor of what the architecture costs), a PyWren-style design (what
the Cirrus paper compares against: every step a map of stateless invocations on the same
Lambda runtime, each reading the whole model and its minibatch from storage and writing
its gradient back), and scikit-learn's SGDClassifier, on the same shards in the same run.

    python -m bench.train [--rows 1000000] [--epochs 2] [--workers 1 2] [--cap 60] [--rounds 5]
                          [--storage local|s3]

``--storage s3`` keeps the shards, the runs' outputs and the PyWren-style model exchange
in an S3 API on loopback (a moto server, ``bench.moto_s3``) instead of local files.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bench.moto_s3 import moto_s3, request_latency_ms, upload_tree
from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.metrics import BinaryMetrics, constant_log_loss
from cirrus_airflow.models.logistic import Minibatch, log_loss_terms
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.shards import ShardReader, SparseRows, read_manifest
from cirrus_airflow.storage import Storage
from cirrus_airflow.training import TrainConfig, TrainingJob
from ps_service.client import PSClient
from ps_service.errors import PSError
from ps_service.launcher import start_local_server
from ps_service.optimizers import make_optimizer, resolve_options

LEARNING_RATE = 0.1
MINIBATCH = 256
ADAGRAD_INITIAL = 0.1  # the parameter server's default initial accumulator
# The target: this share of the way from the constant prediction's test loss to the
# in-memory run's after one epoch, a loss every method should reach in about an epoch.
TARGET_SHARE = 0.9
# Curves are evaluated at times each this factor after the previous one (from the
# first), so a run of any length gets a few dozen points and its time to target is
# known to within 15%.
FIRST_CHECK_S = 0.05
CHECK_RATIO = 1.15
SKLEARN_CHUNK = 16_384  # rows per partial_fit call: the checkpoints fall between calls


# ---- the held-out set and the curves ------------------------------------------------


@dataclass
class Data:
    """The shards in memory: what the in-process methods train on, and the test set
    every method is scored on."""

    prefix: str
    units: list[tuple[str, int]]  # the training (shard, row group) units, in manifest order
    unit_rows: list[int]  # the rows of each unit
    train: SparseRows
    test: SparseRows
    dim: int
    constant_loss: float  # the test loss of always predicting the training positive rate
    test_row_of_entry: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # Kept, not recomputed: each of the many scorings of a curve is then one gather and one bincount.
        self.test_row_of_entry = np.repeat(np.arange(len(self.test)), np.diff(self.test.indptr))

    @classmethod
    def load(cls, prefix: str) -> Data:
        manifest = read_manifest(Storage(), prefix)
        units = [(uri, g) for uri, entry in zip(manifest.shard_uris(prefix, "train"), manifest.shards["train"])
                 for g in range(entry["row_groups"])]
        test = SparseRows.concat(read_units([(uri, None) for uri in manifest.shard_uris(prefix, "test")]))
        constant = constant_log_loss(manifest.label_stats["train_positive_rate"], float(test.labels.mean()))
        train = read_units(units)
        return cls(prefix, units, [len(part) for part in train], SparseRows.concat(train), test,
                   manifest.feature_dim, constant)

    def margins(self, weights: np.ndarray) -> np.ndarray:
        """Test margins under a weight vector laid out as on the server (bias last)."""
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        entries = w[self.test.indices] * self.test.values
        return np.bincount(self.test_row_of_entry, weights=entries, minlength=len(self.test)) + w[-1]

    def log_loss(self, weights: np.ndarray) -> float:
        return float(log_loss_terms(self.margins(weights), self.test.labels.astype(np.float64)).mean())


def read_units(units: list[tuple[str, int | None]]) -> list[SparseRows]:
    """The rows of each (shard, row group) unit, in order; a group of None is the whole shard."""
    parts, storage = [], Storage()
    for uri, groups in itertools.groupby(units, key=lambda unit: unit[0]):
        with ShardReader(storage, uri) as reader:
            parts += [reader.read_all() if g is None else reader.row_group(g) for _, g in groups]
    return parts


class BaselineUnavailable(RuntimeError):
    """A baseline's packages are not installed (they come with the bench extra)."""


def _scikit_learn_modules() -> tuple[ModuleType, type]:
    """scipy.sparse and SGDClassifier, which only the bench extra installs (CI has neither)."""
    try:
        import scipy.sparse
        from sklearn.linear_model import SGDClassifier
    except ImportError as error:
        raise BaselineUnavailable(f"{error} (install the bench extra: pip install -e '.[bench]')") from None
    return scipy.sparse, SGDClassifier


def csr(sparse: ModuleType, rows: SparseRows, dim: int) -> Any:
    """The rows as a float64 scipy CSR matrix (what scikit-learn trains on), without the bias column."""
    return sparse.csr_matrix((rows.values.astype(np.float64), rows.indices, rows.indptr), shape=(len(rows), dim))


class Checkpoints:
    """When a curve is next evaluated: geometrically spaced times, so early progress
    is seen closely and a long run does not spend its time being evaluated."""

    def __init__(self) -> None:
        self.next = FIRST_CHECK_S

    def due(self, seconds: float) -> bool:
        if seconds < self.next:
            return False
        while self.next <= seconds:
            self.next *= CHECK_RATIO
        return True


class Stopwatch:
    """Training time with the evaluations taken out: an in-process method is paused
    while its curve is evaluated, so the evaluations cost it nothing."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._paused = 0.0

    def seconds(self) -> float:
        return time.perf_counter() - self._started - self._paused

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - begun


@dataclass
class Result:
    """One method's run: its rate, its held-out curve and where it ended."""

    name: str
    workers: int
    examples: int
    seconds: float  # training time, evaluations excluded
    curve: list[tuple[float, float]]  # (seconds, test log loss), in time order
    final: BinaryMetrics | None = None  # None: only the loss and AUC below are known
    final_loss: float = float("nan")
    final_auc: float = float("nan")
    epochs: float = 0.0
    examples_per_second: float = 0.0
    loop_rate: float | None = None  # one worker's examples/s inside its training loop (cirrus only)
    elapsed: float = 0.0  # how long the run lasted on its curve's clock
    detail: str = ""  # a line under the table, if the method has more to say
    projected: float | None = None  # an estimate of the time to target of a run stopped before it
    # each round's (rate per worker, loop rate) over the in-memory rate of the same round
    round_ratios: list[tuple[float, float | None]] = field(default_factory=list)

    def ratios(self, base_rate: float) -> tuple[float, float | None]:
        """Against the in-memory rate: the median of the rounds' own ratios where there were
        rounds, else against ``base_rate``."""
        if not self.round_ratios:
            in_loop = None if self.loop_rate is None else self.loop_rate / base_rate
            return self.examples_per_second / self.workers / base_rate, in_loop
        loops = [loop for _, loop in self.round_ratios if loop is not None]
        return (statistics.median(ratio for ratio, _ in self.round_ratios),
                statistics.median(loops) if loops else None)

    def __post_init__(self) -> None:
        if self.final is not None:
            self.final_loss, self.final_auc = self.final.log_loss, self.final.auc
        if not self.examples_per_second:
            self.examples_per_second = self.examples / max(self.seconds, 1e-9)
        self.elapsed = self.elapsed or self.seconds

    def time_to(self, target: float) -> float | None:
        """The first checkpoint at or below ``target``; None if the run never got there."""
        return next((t for t, loss in self.curve if loss <= target), None)


def _epochs(examples: int, data: Data) -> float:
    return examples / len(data.train)


# ---- 1 process, in memory -----------------------------------------------------------


def single_process(data: Data, epochs: int) -> tuple[Result, float]:
    """The baseline: the same model, optimizer and minibatches, in one process; also
    returns the test loss after its first epoch, which sets the target."""
    train, dim = data.train, data.dim
    weights = np.zeros(dim + 1, dtype=np.float32)
    accumulator = np.full(dim + 1, ADAGRAD_INITIAL, dtype=np.float32)
    curve, checks, epoch_losses = [], Checkpoints(), []
    watch = Stopwatch()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(-(-len(train) // MINIBATCH))
        for b in order:
            batch = Minibatch.of(train.slice(b * MINIBATCH, min(len(train), (b + 1) * MINIBATCH)), dim)
            keys = batch.keys.astype(np.intp)  # as the server indexes: one conversion, not one per gather
            grad, _ = batch.gradient(weights[keys])
            accumulator[keys] += grad * grad
            weights[keys] -= LEARNING_RATE * grad / np.sqrt(accumulator[keys])
            if checks.due(watch.seconds()):
                with watch.paused():
                    curve.append((watch.seconds(), data.log_loss(weights)))
        with watch.paused():
            epoch_losses.append(data.log_loss(weights))
            curve.append((watch.seconds(), epoch_losses[-1]))
    seconds = watch.seconds()
    result = Result("1 process, in memory", 1, epochs * len(train), seconds, curve,
                    BinaryMetrics.of(data.margins(weights), data.test.labels), epochs=epochs)
    return result, epoch_losses[0]


# ---- cirrus: serverless workers and the parameter server ----------------------------


class Snapshots:
    """The run's whole model, pulled from the parameter server at checkpoint times by a
    side thread: the curve of a cirrus run. The snapshots are scored after the run, so
    the evaluation takes no CPU from the workers; the pulls (1 MB each, a few dozen of
    them) do take a little of the server's time."""

    def __init__(self, address: str, token: str, table: str, started: float) -> None:
        self.taken: list[tuple[float, np.ndarray]] = []  # (seconds since started, weights)
        self._address, self._token, self._table, self._started = address, token, table, started
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-snapshots", daemon=True)

    def __enter__(self) -> Snapshots:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        checks = Checkpoints()
        with PSClient(self._address, token=self._token) as client:
            while not self._done.wait(max(0.0, checks.next - self._seconds())):
                checks.due(self._seconds())
                try:
                    weights = client.get_table(self._table).reshape(-1)
                except PSError:  # not created yet, or dropped at the end of the run
                    if self.taken:
                        return
                    continue
                self.taken.append((self._seconds(), weights))

    def _seconds(self) -> float:
        return time.perf_counter() - self._started


def cirrus(data: Data, output: str, workers: int, epochs: int) -> Result:
    """A real run (local Lambda runtime, a parameter server of its own), timed from the
    call: its curve includes the cold starts, the shard reads and the driver's set-up."""
    token = secrets.token_urlsafe(16)
    with start_local_server(token=token) as server, \
            LocalLambdaExecutor(function=FunctionConfig(concurrency=workers)) as executor:
        config = TrainConfig(data=data.prefix, output=output, workers=workers, epochs=epochs, minibatch=MINIBATCH,
                             learning_rate=LEARNING_RATE, optimizer="adagrad", poll_interval_s=0.5,
                             ps_address=server.address, ps_token=token,
                             # No live evaluator: it would take a core from the workers; the snapshots
                             # below give the held-out curve instead, scored after the run.
                             eval_interval_s=None)
        job = TrainingJob(config, storage=Storage(), executor=executor)
        started = time.perf_counter()
        with Snapshots(server.address, token, job.table, started) as snapshots:
            summary = job.run()
        # The final model existed no later than run() returned (after saving and scoring it).
        ended = time.perf_counter() - started
    curve = [(t, data.log_loss(w)) for t, w in snapshots.taken] + [(ended, summary["test_logloss"])]
    return Result(f"cirrus, {_plural(workers)} + PS", workers, summary["examples"], summary["train_seconds"], curve,
                  final_loss=summary["test_logloss"], final_auc=summary["test_auc"],
                  epochs=_epochs(summary["examples"], data), examples_per_second=summary["examples_per_second"],
                  loop_rate=summary["worker_loop_examples_per_second"],
                  elapsed=ended)


# ---- PyWren-style: a map of stateless invocations per step ------------------------


PYWREN_HANDLER = "bench.pywren_handler.handler"
BENCH_ROOT = str(Path(__file__).resolve().parents[1])  # where the worker processes import bench from


def pywren_schedule(data: Data, workers: int) -> list[list[tuple[int, int, int]]]:
    """Each worker's minibatches as (unit, first row, stop row) within a row group, over
    its share of the training row groups (the same contiguous split as cirrus's): step t
    of worker w is entry t % n of its list shuffled for epoch t // n."""
    bounds = np.linspace(0, len(data.units), workers + 1).astype(int)
    return [[(u, first, min(first + MINIBATCH, data.unit_rows[u]))
             for u in range(bounds[w], bounds[w + 1]) for first in range(0, data.unit_rows[u], MINIBATCH)]
            for w in range(workers)]


def _pywren_event(data: Data, batches: list[tuple[int, int, int]], worker: int, step: int, model_uri: str,
                  gradient_uri: str) -> dict[str, Any]:
    epoch, index = divmod(step, len(batches))
    unit, first, stop = batches[np.random.default_rng([worker, epoch]).permutation(len(batches))[index]]
    return {"model": model_uri, "unit": list(data.units[unit]), "rows": [first, stop], "bias_key": data.dim,
            "gradient": gradient_uri}


def _write_model(storage: Storage, uri: str, weights: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, weights.reshape(-1), allow_pickle=False)
    storage.write_bytes(uri, buffer.getvalue())


def _mean_gradient(storage: Storage, uris: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The workers' sparse gradients, read from storage and averaged per key: the
    gradient of their minibatches together."""
    parts = [storage.read_bytes(uri) for uri in uris]
    keys = np.concatenate([np.frombuffer(p, np.int64, count=len(p) // 12) for p in parts])
    grads = np.concatenate([np.frombuffer(p, np.float32, offset=len(p) // 12 * 8) for p in parts])
    unique, where = np.unique(keys, return_inverse=True)
    return unique, (np.bincount(where, weights=grads, minlength=len(unique)) / len(uris)).astype(np.float32)


@dataclass
class StepTimes:
    """Where a PyWren-style step's time goes, summed over the steps after the first (whose
    invocations are cold starts). A step waits for its slowest invocation, so the worker
    side is that invocation's own timings and the invocation overhead is the rest of the
    map's wall time (the Invoke API, the runtime, the executor's threads)."""

    steps: int = 0
    invocation: float = 0.0
    model_read: float = 0.0  # worker: the whole model
    data_read: float = 0.0  # worker: the row group that holds its minibatch
    compute: float = 0.0  # worker: the gradient
    gradient_write: float = 0.0
    gradient_reads: float = 0.0  # driver: every worker's gradient
    update: float = 0.0  # driver: their mean and the Adagrad update
    model_write: float = 0.0  # driver

    def add(self, mapped_s: float, replies: list[dict[str, Any]], driver: tuple[float, float, float]) -> None:
        slowest = max(replies, key=lambda r: r["model_ms"] + r["data_ms"] + r["compute_ms"] + r["write_ms"])
        inside = (slowest["model_ms"] + slowest["data_ms"] + slowest["compute_ms"] + slowest["write_ms"]) / 1e3
        self.steps += 1
        self.invocation += max(0.0, mapped_s - inside)
        self.model_read += slowest["model_ms"] / 1e3
        self.data_read += slowest["data_ms"] / 1e3
        self.compute += slowest["compute_ms"] / 1e3
        self.gradient_write += slowest["write_ms"] / 1e3
        self.gradient_reads += driver[0]
        self.update += driver[1]
        self.model_write += driver[2]

    def ms(self, seconds: float) -> float:
        return 1e3 * seconds / max(self.steps, 1)

    def summary(self) -> str:
        storage = self.model_read + self.data_read + self.gradient_write + self.gradient_reads + self.model_write
        total = storage + self.invocation + self.compute + self.update
        return (f"{self.ms(total):.1f} ms each: invocation {self.ms(self.invocation):.1f}, storage "
                f"{self.ms(storage):.1f} (model {self.ms(self.model_read):.1f}, minibatch's row group "
                f"{self.ms(self.data_read):.1f}, gradient write {self.ms(self.gradient_write):.1f}, "
                f"driver's gradient reads {self.ms(self.gradient_reads):.1f} and model write "
                f"{self.ms(self.model_write):.1f}), compute {self.ms(self.compute + self.update):.1f} "
                f"(gradient {self.ms(self.compute):.1f}, driver's Adagrad {self.ms(self.update):.1f})")


def pywren(data: Data, workers: int, scratch: str, target: float, cap_s: float,
           in_memory_steps: float | None) -> Result:
    """The design Cirrus replaces, as PyWren runs it: one synchronous step at a time, each
    one map of ``workers`` stateless invocations on the local Lambda runtime (the same one
    cirrus runs on; see ``bench.pywren_handler``), each reading the whole model and its
    minibatch's row group from storage and writing its gradient there; the driver (the
    reducer) reads every gradient, applies the server's own Adagrad to their mean and
    writes the model back, all under ``scratch`` (a folder or an S3 prefix). Timed from the
    first map, cold starts included as for cirrus; runs until the test loss reaches
    ``target`` or ``cap_s`` seconds pass.
    ``in_memory_steps``, the steps the in-memory run took to the target, projects the
    time to target of a run that is stopped first."""
    storage = Storage()
    model_uri = f"{scratch}/model.npy"
    gradient_uris = [f"{scratch}/gradient-{w}.bin" for w in range(workers)]
    schedule = pywren_schedule(data, workers)
    optimizer = make_optimizer("adagrad", (data.dim + 1, 1),
                               resolve_options("adagrad", {"learning_rate": LEARNING_RATE}))
    weights = np.zeros((data.dim + 1, 1), dtype=np.float32)
    _write_model(storage, model_uri, weights)
    function = FunctionConfig(handler=PYWREN_HANDLER, concurrency=workers, environment={"PYTHONPATH": BENCH_ROOT})
    curve, checks, examples, step, times, first_step = [], Checkpoints(), 0, 0, StepTimes(), 0.0
    with LocalLambdaExecutor(function_name="pywren-step", function=function) as executor:
        watch = Stopwatch()
        while watch.seconds() < cap_s:
            events = [_pywren_event(data, schedule[w], w, step, model_uri, gradient_uris[w]) for w in range(workers)]
            begun = time.perf_counter()
            replies = executor.map(events)
            mapped = time.perf_counter()
            keys, grad = _mean_gradient(storage, gradient_uris)
            reduced = time.perf_counter()
            step += 1
            optimizer.apply(weights, keys, grad.reshape(-1, 1), step)
            applied = time.perf_counter()
            _write_model(storage, model_uri, weights)
            written = time.perf_counter()
            examples += sum(r["examples"] for r in replies)
            if step == 1:
                first_step = written - begun
            else:
                times.add(mapped - begun, replies, (reduced - mapped, applied - reduced, written - applied))
            if checks.due(watch.seconds()):
                with watch.paused():
                    curve.append((watch.seconds(), data.log_loss(weights)))
                if curve[-1][1] <= target:
                    break
        seconds = watch.seconds()
    detail = (f"PyWren-style, {_plural(workers)}: {step:,} steps of {workers} invocation{'s' if workers > 1 else ''} "
              f"x {MINIBATCH} examples; the first {first_step:.2f} s (cold starts), the others {times.summary()}")
    projected = None
    if in_memory_steps and times.steps and not any(loss <= target for _, loss in curve):
        projected = first_step + in_memory_steps * (seconds - first_step) / times.steps
    return Result(f"PyWren-style, {_plural(workers)}", workers, examples, seconds, curve,
                  BinaryMetrics.of(data.margins(weights), data.test.labels), epochs=_epochs(examples, data),
                  detail=detail, projected=projected)


# ---- scikit-learn -------------------------------------------------------------------


def scikit_learn(data: Data, epochs: int) -> Result:
    """SGDClassifier(loss="log_loss") with its defaults (per-example SGD, the "optimal"
    schedule, L2 1e-4) on the same hashed features: what one would write in one process."""
    sparse, SGDClassifier = _scikit_learn_modules()
    train, test = csr(sparse, data.train, data.dim), csr(sparse, data.test, data.dim)
    labels = data.train.labels
    model = SGDClassifier(loss="log_loss", random_state=0)
    starts = np.arange(0, len(labels), SKLEARN_CHUNK)
    curve, checks = [], Checkpoints()
    watch = Stopwatch()
    for epoch in range(epochs):
        for start in np.random.default_rng(epoch).permutation(starts):
            model.partial_fit(train[start:start + SKLEARN_CHUNK], labels[start:start + SKLEARN_CHUNK], classes=[0, 1])
            if checks.due(watch.seconds()):
                with watch.paused():
                    curve.append((watch.seconds(), _sklearn_loss(model, test, data)))
        with watch.paused():
            curve.append((watch.seconds(), _sklearn_loss(model, test, data)))
    seconds = watch.seconds()
    final = BinaryMetrics.of(model.decision_function(test), data.test.labels)
    return Result("scikit-learn SGD, 1 process", 1, epochs * len(labels), seconds, curve, final, epochs=epochs)


def _sklearn_loss(model: Any, test: Any, data: Data) -> float:
    margins = model.decision_function(test)
    return float(log_loss_terms(margins, data.test.labels.astype(np.float64)).mean())


# ---- the table ----------------------------------------------------------------------


def _plural(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def _to_target(result: Result, target: float, reference: Result | None) -> tuple[str, str]:
    """The time to target and its ratio to cirrus's with as many workers; a run that
    never got there shows how long it ran, and the ratio becomes a lower bound."""
    reached = result.time_to(target)
    base = reference.time_to(target) if reference is not None else None
    if reached is None:
        return f"> {result.elapsed:.2f} s", (f"> {result.elapsed / base:.2f}x" if base else "-")
    if base is None:
        return f"{reached:.2f} s", "-"
    return f"{reached:.2f} s", f"{reached / base:.2f}x"


COLUMNS = (("configuration", -29), ("examples/s", 11), ("per worker", 12), ("vs 1 proc", 11), ("in loop", 10),
           ("to target", 11), ("vs cirrus", 11), ("trained", 9), ("log loss", 10), ("AUC", 8))


def _line(cells: list[str]) -> str:
    return "  " + "".join(f"{c:<{-w}}" if w < 0 else f"{c:>{w}}" for c, (_, w) in zip(cells, COLUMNS))


def print_table(results: list[Result], target: float) -> None:
    base = results[0].examples_per_second
    cirrus_runs = {r.workers: r for r in results if r.name.startswith("cirrus")}
    print(_line([name for name, _ in COLUMNS]))
    for r in results:
        per_worker = r.examples_per_second / r.workers
        seconds, ratio = _to_target(r, target, cirrus_runs.get(r.workers))
        versus, loop = r.ratios(base)
        in_loop = "" if loop is None else f"{loop:.2f}x"
        print(_line([r.name, f"{r.examples_per_second:,.0f}", f"{per_worker:,.0f}", f"{versus:.2f}x",
                     in_loop, seconds, ratio, f"{r.epochs:.2f} ep", f"{r.final_loss:.4f}", f"{r.final_auc:.4f}"]))
    for r in results:
        if len(r.round_ratios) > 1:
            line = f"  {r.name}, round by round: vs 1 proc " + " ".join(f"{x:.2f}x" for x, _ in r.round_ratios)
            if all(loop is not None for _, loop in r.round_ratios):
                line += ", in loop " + " ".join(f"{loop:.2f}x" for _, loop in r.round_ratios)
            print(line)
        if r.detail:
            print("  " + r.detail)
        if r.projected is not None:
            cirrus_run = cirrus_runs.get(r.workers)
            reference = cirrus_run.time_to(target) if cirrus_run is not None else None
            versus = f", ~{r.projected / reference:,.0f}x cirrus's" if reference else ""
            print(f"    projected time to target: ~{r.projected:,.0f} s{versus} "
                  "(as many steps as the in-memory run took)")


def _notes(data: Data, cap_s: float, results: list[Result], rounds: int) -> list[str]:
    sklearn = [
        "scikit-learn: SGDClassifier(loss='log_loss') defaults (per-example SGD, 'optimal' rate, L2 1e-4), "
        f"partial_fit on {SKLEARN_CHUNK:,}-row chunks.",
    ] if any(r.name.startswith("scikit-learn") for r in results) else []
    return [
        f"in memory and cirrus: {rounds} round{'s' if rounds > 1 else ''}, each running them back to back; each "
        "shows its median round's run,",
        "  and its ratios (vs 1 proc, in loop) are the median of the rounds' own ratios: this machine's speed "
        "wanders by",
        "  20% and more within a minute, and runs moments apart see the same machine.",
        "per worker: examples/s / workers; vs 1 proc: that against the in-memory process's rate; in loop: one",
        "  worker's rate inside its training loop (its start-up, registration and hand-overs excluded, as the",
        "  in-memory rate excludes loading the data) against the in-memory rate.",
        "to target: training seconds until the test loss first reached the target, scored at checkpoints 15% apart",
        "  (scoring off the clock); in-process methods from their first step with the data in memory; cirrus from",
        "  the start of run() (cold starts, shard reads included), its model pulled from the PS by a side thread",
        "  and scored after the run; vs cirrus: that time / cirrus's with as many workers (> : a lower bound).",
        "PyWren-style: each step is one map of stateless invocations, one per worker, on the same local Lambda",
        f"  runtime as cirrus; each reads the whole model ({4 * (data.dim + 1) / 1e6:.1f} MB) and the row group "
        "of its minibatch from storage",
        "  (as the title says), and writes its gradient there; the driver averages them, applies the same Adagrad and",
        f"  writes the model back. It stops at the target or after {cap_s:g} s; a step's time is split between the",
        "  invocation (the map's wall time beyond its slowest invocation's), storage and compute. A run stopped",
        "  first is projected at its warm step time over the steps the in-memory run took (the same algorithm",
        "  for 1 worker; more workers average more examples per step, so they should need no more).",
        *sklearn,
        "trained: epochs of examples seen; log loss, AUC: on the test rows at the end of each run.",
    ]


def run_all(data: Data, place: str, epochs: int, workers: list[int], cap_s: float,
            rounds: int = 1) -> tuple[list[Result], float]:
    """Every method in turn; the in-memory run goes first, as its first epoch sets the target.
    The in-memory and cirrus runs are repeated ``rounds`` times, back to back in each round.
    This machine's speed wanders by 20% and more within a minute, so a ratio is taken within
    a round and the median over rounds counts; each method shows its median round's run.
    (Each method's fastest run, used before, favoured the in-memory process: its runs are
    short, and a short run can fall wholly within a fast spell.) The runs' outputs and the
    PyWren-style scratch objects go under ``place`` (a folder or an S3 prefix). A baseline
    whose packages are missing is reported as skipped."""
    runs: dict[str, list[Result]] = {}
    first_epoch = float("nan")
    for round_ in range(rounds):
        base, first_epoch = single_process(data, epochs)  # the same seeds: the same losses every round
        runs.setdefault(base.name, []).append(base)
        for w in workers:
            run = cirrus(data, f"{place}/run{w}-{round_}", w, epochs)
            runs.setdefault(run.name, []).append(run)
    results = paired_results(list(runs.values()))
    base = results[0]
    target = data.constant_loss - TARGET_SHARE * (data.constant_loss - first_epoch)
    print(f"  target: test log loss {target:.4f}, {TARGET_SHARE:.0%} of the way from the constant prediction's "
           f"{data.constant_loss:.4f} to the in-memory run's {first_epoch:.4f} after 1 epoch")
    reached = base.time_to(target)
    in_memory_steps = reached * base.examples_per_second / MINIBATCH if reached is not None else None
    results += [pywren(data, w, f"{place}/pywren-{w}", target, cap_s, in_memory_steps) for w in workers]
    try:
        results.append(scikit_learn(data, epochs))
    except BaselineUnavailable as error:
        print(f"  scikit-learn baseline skipped: {error}")
    return results, target


def paired_results(rounds_by_method: list[list[Result]]) -> list[Result]:
    """Each method's run of median rate (of the two middle ones, the slower), carrying its
    rounds' ratios to the first method's run of the same round."""
    base_runs = rounds_by_method[0]
    results = []
    for tries in rounds_by_method:
        result = sorted(tries, key=lambda r: r.examples_per_second)[(len(tries) - 1) // 2]
        if tries is not base_runs:
            result.round_ratios = [
                (run.examples_per_second / run.workers / base.examples_per_second,
                 None if run.loop_rate is None else run.loop_rate / base.examples_per_second)
                for run, base in zip(tries, base_runs)]
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cap", type=float, default=60.0,
                        help="seconds the PyWren-style baseline may train before it is reported as '> cap'")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the in-memory and cirrus runs; the median of each round's ratio counts")
    parser.add_argument("--storage", choices=("local", "s3"), default="local",
                        help="where the data and every exchange through storage go: local files, or an S3 API "
                             "on loopback (a moto server)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="cirrus-bench-") as tmp:
        root = Path(tmp)
        write_synthetic_criteo(Storage(), str(root / "clicks.tsv"), rows=args.rows, seed=0)
        with LocalLambdaExecutor(function=FunctionConfig(concurrency=2)) as executor:
            run_preprocess(PreprocessConfig(inputs=[str(root / "clicks.tsv")], output=str(root / "shards"),
                                            workers=2), storage=Storage(), executor=executor)
        with _storage_place(args.storage, root) as (place, where):
            data = Data.load(f"{place}/shards")
            print(f"\n== train: logistic regression, {args.rows:,} rows ({len(data.train):,} train, "
                  f"{len(data.test):,} test), minibatch {MINIBATCH}, Adagrad lr {LEARNING_RATE}, "
                  f"{args.epochs} epoch(s), {where} ==")
            results, target = run_all(data, place, args.epochs, args.workers, args.cap, args.rounds)
        print_table(results, target)
        for line in _notes(data, args.cap, results, args.rounds):
            print("  " + line)


@contextlib.contextmanager
def _storage_place(storage: str, root: Path) -> Iterator[tuple[str, str]]:
    """Where the shards (prepared in ``root/shards``) are read from and the runs write, and
    how to say so: ``root`` itself, or an S3 prefix of a moto server they are copied to
    (the preprocessing is not what this benchmark measures, so it runs on local files)."""
    if storage == "local":
        yield str(root), "data in local files"
        return
    with moto_s3() as prefix:
        upload_tree(root / "shards", f"{prefix}/shards")
        put_ms, get_ms = request_latency_ms(prefix, 4 * (read_manifest(Storage(), f"{prefix}/shards").feature_dim + 1))
        yield prefix, f"data in S3 (a moto server on loopback: a model-sized PUT {put_ms:.0f} ms, GET {get_ms:.0f} ms)"


if __name__ == "__main__":
    main()
