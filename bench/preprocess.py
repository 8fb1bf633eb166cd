"""Preprocessing speed: the Criteo map tasks on the local Lambda runtime against a
single-process pandas pipeline doing the same work (read, hash, log-scale, write
Parquet), on the same file in the same run.

    python -m bench.preprocess [--rows 1000000]
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cirrus_airflow.datasets import write_synthetic_criteo
from cirrus_airflow.executor import FunctionConfig, LocalLambdaExecutor
from cirrus_airflow.formats.criteo import COLUMNS, NUM_CATEGORICAL, NUM_INTEGER
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.storage import Storage

from bench.lambda_reports import LambdaReports

HASH_BITS = 18


def pandas_pipeline(path: Path, out: Path) -> int:
    """The baseline: what a data engineer would write with pandas in one process."""
    df = pd.read_csv(path, sep="\t", header=None, names=COLUMNS)
    ints = df[COLUMNS[1 : 1 + NUM_INTEGER]].to_numpy(dtype=np.float64)
    logged = np.sign(ints) * np.log1p(np.abs(ints))
    lo, hi = np.nanmin(logged, axis=0), np.nanmax(logged, axis=0)
    scaled = (logged - lo) / np.where(hi > lo, hi - lo, 1.0)
    hashed = np.column_stack([
        pd.util.hash_array(df[c].fillna("").to_numpy(dtype=object), hash_key=f"{j:016d}") & ((1 << HASH_BITS) - 1)
        for j, c in enumerate(COLUMNS[1 + NUM_INTEGER :])
    ]).astype(np.int64) + 2 * NUM_INTEGER
    present = ~np.isnan(scaled)
    idx = np.concatenate([np.where(present, np.arange(NUM_INTEGER), -1), hashed], axis=1)
    val = np.concatenate([np.where(present, scaled, 0.0), np.ones((len(df), NUM_CATEGORICAL))], axis=1)
    keep = idx >= 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    table = pa.table({
        "label": pa.array(df["label"].to_numpy(np.float32)),
        "indices": pa.ListArray.from_arrays(offsets, pa.array(idx[keep].astype(np.int32))),
        "values": pa.ListArray.from_arrays(offsets, pa.array(val[keep].astype(np.float32))),
    })
    pq.write_table(table, out / "pandas.parquet", row_group_size=4096)
    return len(df)


class PassReports(LambdaReports):
    """The runtime's reports, also split by pass: where the workers' time goes.

    Each invocation's billed time goes to the pass that was running when it was reported
    (a report comes before the progress call of its invocation, and the last progress
    call of a pass marks its end); cold starts (init durations) are counted apart.
    """

    _INIT = re.compile(r"Init Duration: ([\d.]+) ms")

    def __init__(self) -> None:
        super().__init__()
        self.reported: list[tuple[float, int]] = []  # (when, billed ms)
        self.ended: dict[str, float] = {}  # pass -> when its last invocation finished
        self.init_ms = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        billed = self.billed_ms
        super().emit(record)
        if self.billed_ms != billed:
            self.reported.append((time.perf_counter(), self.billed_ms - billed))
            init = self._INIT.search(record.getMessage())
            self.init_ms += float(init.group(1)) if init else 0.0

    def progress(self, stage: str, done: int, total: int) -> None:
        self.ended[stage] = time.perf_counter()

    def passes(self, started: float) -> list[tuple[str, float, float]]:
        """(pass, wall seconds, billed worker seconds) of a run begun at ``started``, in order."""
        out, begun, previous = [], started, float("-inf")
        for stage, end in sorted(self.ended.items(), key=lambda item: item[1]):
            busy = sum(ms for when, ms in self.reported if previous < when <= end) / 1000
            out.append((stage, end - begun, busy))
            begun = previous = end
        return out


def cirrus(path: Path, out: Path, workers: int) -> dict:
    # Default 32 MB splits; ``workers`` bounds how many run at once.
    config = PreprocessConfig(inputs=[str(path)], output=str(out), hash_bits=HASH_BITS, workers=workers)
    with PassReports() as reports, \
            LocalLambdaExecutor(function=FunctionConfig(concurrency=workers, memory_mb=2048)) as executor:
        started = time.perf_counter()
        summary = run_preprocess(config, storage=Storage(), executor=executor, progress=reports.progress)
        summary["wall"] = time.perf_counter() - started
    summary["peak_mb"] = reports.peak_mb
    summary["passes"] = reports.passes(started)
    summary["init_s"] = reports.init_ms / 1000
    return summary


def _timed(pipeline, *args) -> float:
    started = time.perf_counter()
    pipeline(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of the three pipelines, back to back; a ratio is taken within a round and "
                             "the median over rounds counts (this machine's speed wanders by 20%% and more)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cirrus-bench-") as tmp:
        root = Path(tmp)
        raw = root / "clicks.tsv"
        info = write_synthetic_criteo(Storage(), str(raw), rows=args.rows, seed=0)
        print(f"\n== preprocess: {args.rows:,} Criteo rows, {info['bytes'] / 1e6:.0f} MB ==")
        rounds = []
        for _ in range(args.repeat):
            pandas_s = _timed(pandas_pipeline, raw, root)
            rounds.append((pandas_s, {w: cirrus(raw, root / f"w{w}", w) for w in (1, 2)}))
        _print_rounds(args.rows, rounds)


def _print_rounds(rows: int, rounds: list[tuple[float, dict[int, dict]]]) -> None:
    """Each pipeline's median round, and ratios that are the median of each round's own."""
    base = sorted(pandas_s for pandas_s, _ in rounds)[len(rounds) // 2]  # the median round (the slower of two)
    print(f"  {'pipeline':<24}{'seconds':>9}{'rows/s':>12}{'vs pandas':>11}{'worker peak':>13}")
    print(f"  {'pandas, 1 process':<24}{base:>9.2f}{rows / base:>12,.0f}{1.0:>10.2f}x{'':>13}")
    for w in (1, 2):
        runs = [by_workers[w] for _, by_workers in rounds]
        s = sorted(runs, key=lambda run: run["wall"])[len(runs) // 2]
        ratios = [pandas_s / by_workers[w]["wall"] for pandas_s, by_workers in rounds]
        print(f"  {f'cirrus, {w} worker(s)':<24}{s['wall']:>9.2f}{rows / s['wall']:>12,.0f}"
              f"{_median(ratios):>10.2f}x{s['peak_mb']:>10} MB")
        print("      " + ", ".join(f"{name} {wall:.2f} s ({busy:.2f} worker-s)" for name, wall, busy in s["passes"])
              + f", cold starts {s['init_s']:.2f} worker-s")
        if len(rounds) > 1:
            print("      vs pandas round by round: " + " ".join(f"{ratio:.2f}x" for ratio in ratios))
    speedups = [by_workers[1]["wall"] / by_workers[2]["wall"] for _, by_workers in rounds]
    print(f"  speed-up from 1 to 2 workers: {_median(speedups):.2f}x (round by round "
          + " ".join(f"{x:.2f}x" for x in speedups) + "; cirrus times include every pass and the runtime's cold "
          "starts)")
    print(f"  {len(rounds)} round(s), each running the three back to back; each row shows its median round, and "
          "vs pandas is the median of the rounds' own ratios")


def _median(values: list[float]) -> float:
    return float(np.median(values))


if __name__ == "__main__":
    main()
