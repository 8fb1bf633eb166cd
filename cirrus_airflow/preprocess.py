"""The preprocessing driver: plan splits, fan out two passes, write the manifest last.

The driver only plans and merges; every byte of input is read by the map tasks in
``lambda_pkg.preprocess``, on whichever serverless executor it is given.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cirrus_airflow.executor import ServerlessExecutor
from cirrus_airflow.formats import criteo
from cirrus_airflow.numeric import NORMALIZERS, ColumnStats
from cirrus_airflow.shards import MANIFEST_NAME, Manifest, manifest_uri, write_manifest
from cirrus_airflow.storage import Storage, StorageError, is_s3, join, normalize
from cirrus_airflow.formats.text import plan_ranges

log = logging.getLogger(__name__)

FORMATS = ("criteo",)
MAX_HASH_BITS = 26
Progress = Callable[[str, int, int], None]
_SNIFF_BYTES = 1 << 16


class PreprocessError(RuntimeError):
    """The input cannot be preprocessed as asked; the message says why and where."""


@dataclass
class PreprocessConfig:
    """What to preprocess and how; validated before any work starts."""

    inputs: list[str]
    output: str
    format: str = "criteo"
    hash_bits: int = 18
    hash_seed: int = 0
    log_transform: bool = True
    normalize: str = "minmax"
    test_fraction: float = 0.2
    split_seed: int = 0
    row_group_rows: int = 4096
    split_bytes: int = 32 << 20
    workers: int = 4
    max_rejected_fraction: float = 0.01

    def validate(self) -> None:
        if not self.inputs:
            raise ValueError("inputs is empty: give at least one input URI (a file or a folder/prefix)")
        if not self.output:
            raise ValueError("output is empty: give the URI of a folder (local path or s3://bucket/prefix)")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if not 1 <= self.hash_bits <= MAX_HASH_BITS:
            raise ValueError(
                f"hash_bits must be between 1 and {MAX_HASH_BITS} (2**bits features, each a weight and "
                f"optimizer state on the parameter server), got {self.hash_bits}"
            )
        if self.normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.row_group_rows < 1:
            raise ValueError(f"row_group_rows must be at least 1, got {self.row_group_rows}")
        if self.split_bytes < 1024:
            raise ValueError(f"split_bytes must be at least 1024, got {self.split_bytes}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError(f"max_rejected_fraction must be in [0, 1], got {self.max_rejected_fraction}")

    def features(self) -> criteo.CriteoFeatures:
        return criteo.CriteoFeatures(
            hash_bits=self.hash_bits, hash_seed=self.hash_seed,
            log_transform=self.log_transform, normalize=self.normalize,
        )


@dataclass
class _Split:
    uri: str
    start: int
    end: int
    size: int
    dialect: criteo.CriteoDialect

    def source(self) -> dict:
        return {"uri": self.uri, "start": self.start, "end": self.end, "size": self.size}


def expand_inputs(storage: Storage, inputs: list[str]) -> list[tuple[str, int]]:
    """Every input file with its size: a file stands for itself, a folder for its files."""
    files: list[tuple[str, int]] = []
    for raw in inputs:
        uri = normalize(raw)
        try:
            files.append((uri, storage.size(uri)))
            continue
        except StorageError:
            pass
        listed = [u for u in storage.list(uri) if not u.rsplit("/", 1)[-1].startswith(("_", "."))]
        if not listed:
            where = "prefix" if is_s3(uri) else "path"
            raise PreprocessError(f"input {raw}: no such file, and no files under that {where}")
        files.extend((u, storage.size(u)) for u in listed)
    empty = [u for u, size in files if size == 0]
    if len(empty) == len(files):
        raise PreprocessError(f"the input is empty: {', '.join(empty)}")
    return [(u, s) for u, s in files if s > 0]


def plan_splits(storage: Storage, files: list[tuple[str, int]], *, split_bytes: int, min_splits: int) -> list[_Split]:
    """Cut files into line-aligned byte ranges: at least ``min_splits`` in all, none
    much larger than ``split_bytes``, each file in proportion to its size."""
    total = sum(size for _, size in files)
    target = min(split_bytes, max(1, -(-total // min_splits)))
    splits: list[_Split] = []
    for uri, size in files:
        try:
            dialect = criteo.sniff(storage.read_bytes(uri, 0, min(size, _SNIFF_BYTES)), uri)
        except ValueError as exc:
            raise PreprocessError(str(exc)) from None
        for start, end in plan_ranges(size, -(-size // target)):
            splits.append(_Split(uri, start, end, size, dialect))
    return splits


def run_preprocess(
    config: PreprocessConfig,
    *,
    storage: Storage,
    executor: ServerlessExecutor,
    progress: Progress | None = None,
) -> dict:
    """Preprocess ``config.inputs`` into shards under ``config.output``; returns a summary.

    A rerun replaces the previous output: the old manifest goes first (so a failed
    rerun never looks finished), stale shards go before the new manifest is written.
    """
    config.validate()
    started = time.monotonic()
    output = normalize(config.output)
    files = expand_inputs(storage, config.inputs)
    splits = plan_splits(storage, files, split_bytes=config.split_bytes, min_splits=config.workers)
    log.info("preprocessing %d file(s), %d bytes, in %d splits", len(files), sum(s for _, s in files), len(splits))
    storage.delete(manifest_uri(output))

    features = config.features()
    split_params = {"test_fraction": config.test_fraction, "seed": config.split_seed}
    base = {"format": config.format, "split": split_params}
    stats_events = [
        {**base, "task": "preprocess.stats", "source": s.source(), "dialect": s.dialect.to_json(),
         "features": features.to_json()}
        for s in splits
    ]
    first = executor.map(stats_events, progress=_stage(progress, "statistics"))

    stats = _merge_stats(first)
    features = criteo.CriteoFeatures(**{**asdict(features), "stats": stats})
    counts = _counts(first)
    too_many = counts["rows_rejected"] > config.max_rejected_fraction * max(1, counts["rows_read"])

    n = len(splits)
    first_lines = _first_lines(splits, first)
    transform_events = [
        {**base, "task": "preprocess.transform", "source": s.source(), "dialect": s.dialect.to_json(),
         "features": features.to_json(), "first_line": first_lines[i],
         "row_group_rows": config.row_group_rows, "write_shards": not too_many,
         "outputs": {
             "train": join(output, "shards", f"part-{i:05d}.parquet"),
             "test": join(output, "shards", f"part-{n + i:05d}.parquet"),
             "rejected": join(output, "rejected", f"split-{i:05d}.jsonl"),
         }}
        for i, s in enumerate(splits)
    ]
    second = executor.map(transform_events, progress=_stage(progress, "transform"))
    written = {r["rejected_uri"] for r in second if r["rejected_uri"]}
    written |= {entry["uri"] for r in second for entry in r["shards"].values()}
    _remove_stale(storage, output, keep=written)
    if too_many:
        raise PreprocessError(_rejection_message(config, splits, first, counts, output))

    shards = {
        name: [
            {"path": entry["uri"][len(output) + 1 :], "rows": entry["rows"], "row_groups": entry["row_groups"]}
            for r in second if (entry := r["shards"].get(name))
        ]
        for name in ("train", "test")
    }
    if not shards["train"]:
        raise PreprocessError(f"no training rows were produced from {', '.join(u for u, _ in files)}")
    manifest = Manifest(
        kind="sparse",
        feature_dim=features.feature_dim,
        shards=shards,
        transform=features.to_json(),
        split={"method": "row_hash", **split_params},
        counts=counts,
        source={"format": config.format, "files": [u for u, _ in files], "splits": len(splits)},
        row_group_rows=config.row_group_rows,
        label_stats={"train_positive_rate": counts["train_positives"] / max(1, counts["train_rows"])},
    )
    uri = write_manifest(storage, output, manifest)
    return {
        **{k: v for k, v in counts.items() if k != "train_positives"},
        "shards": sum(len(v) for v in shards.values()),
        "manifest_uri": uri,
        "output": output,
        "feature_dim": features.feature_dim,
        "seconds": round(time.monotonic() - started, 3),
    }


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _merge_stats(results: list[dict]) -> ColumnStats:
    merged = ColumnStats.from_json(results[0]["stats"])
    for r in results[1:]:
        merged = merged.merge(ColumnStats.from_json(r["stats"]))
    return merged


def _counts(results: list[dict]) -> dict:
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r["rejected_by_reason"])
    rows = sum(r["rows"] for r in results)
    rejected = sum(r["rejected"] for r in results)
    return {
        "rows_read": rows + rejected,
        "rows_written": rows,
        "rows_rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "blank_lines": sum(r["blank"] for r in results),
        "train_rows": sum(r["train_rows"] for r in results),
        "test_rows": sum(r["test_rows"] for r in results),
        "train_positives": sum(r["train_positives"] for r in results),
    }


def _first_lines(splits: list[_Split], results: list[dict]) -> list[int]:
    """The 1-based line number at which each split starts in its file."""
    out, line, previous = [], 1, None
    for split, result in zip(splits, results):
        if split.uri != previous:
            line, previous = 1, split.uri
        out.append(line)
        line += result["lines"]
    return out


def _remove_stale(storage: Storage, output: str, *, keep: set[str]) -> None:
    for folder in ("shards", "rejected"):
        for uri in storage.list(join(output, folder)):
            if uri not in keep:
                storage.delete(uri)


def _rejection_message(config: PreprocessConfig, splits: list[_Split], results: list[dict], counts: dict, output: str) -> str:
    per_file: Counter[tuple[str, str]] = Counter()
    for split, r in zip(splits, results):
        for reason, n in r["rejected_by_reason"].items():
            per_file[(split.uri, reason)] += n
    (worst_file, worst_reason), worst_n = per_file.most_common(1)[0]
    fraction = counts["rows_rejected"] / max(1, counts["rows_read"])
    return (
        f"{counts['rows_rejected']} of {counts['rows_read']} rows ({fraction:.2%}) were rejected, more than "
        f"max_rejected_fraction={config.max_rejected_fraction:g}; the worst is {worst_file} with {worst_n} "
        f"rows rejected for {worst_reason}. The rejected rows, with line numbers, are under "
        f"{join(output, 'rejected')}/; no {MANIFEST_NAME} was written."
    )
