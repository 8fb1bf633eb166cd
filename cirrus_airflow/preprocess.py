"""The preprocessing driver: plan splits, fan out two passes, write the manifest last.

The driver only plans and merges; every byte of input is read by the map tasks in
``lambda_pkg.preprocess``, on whichever serverless executor it is given (the driver
reads only the first bytes of each file, to tell its dialect and compression).

Inputs are files, folders/prefixes, globs (``data/day_*.tsv``,
``s3://bucket/logs/2026-*/part-*.tsv.gz``) or lists of them; plain text is cut into
byte ranges, a gzip file is one split of its own.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cirrus_airflow.executor import InvocationError, ServerlessExecutor
from cirrus_airflow.formats import criteo
from cirrus_airflow.formats.text import CorruptInputError, is_gzip, plan_ranges, read_gzip
from cirrus_airflow.numeric import NORMALIZERS, ColumnStats
from cirrus_airflow.shards import MANIFEST_NAME, Manifest, manifest_uri, write_manifest
from cirrus_airflow.storage import Storage, StorageError, has_glob, is_s3, join, normalize

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
        if isinstance(self.inputs, str):
            raise ValueError(f"inputs must be a list of URIs, got the string {self.inputs!r}; wrap it in a list")
        if not self.inputs:
            raise ValueError("inputs is empty: give at least one input URI (a file, a folder/prefix or a glob)")
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


@dataclass(frozen=True)
class InputFile:
    """One input file as the planner sees it: how large, whether gzip, how it is written."""

    uri: str
    size: int
    compressed: bool
    dialect: criteo.CriteoDialect


@dataclass
class _Split:
    file: InputFile
    start: int
    end: int

    def source(self) -> dict:
        f = self.file
        return {"uri": f.uri, "start": self.start, "end": self.end, "size": f.size, "compressed": f.compressed}


def expand_inputs(storage: Storage, inputs: list[str]) -> list[tuple[str, int]]:
    """Every input file with its size, each once, in an order fixed by the inputs alone.

    A file stands for itself, a glob for the files it matches and a folder for its
    files, each expansion sorted: a rerun sees the same files in the same order and so
    writes the same shards. A file named twice (say by a glob and by name) counts once.
    """
    files: dict[str, int] = {}
    for raw in inputs:
        for uri, size in _expand(storage, raw):
            files.setdefault(uri, size)
    return list(files.items())


def _expand(storage: Storage, raw: str) -> list[tuple[str, int]]:
    """The files of one input. A file that exists is taken by name even if its name
    holds glob characters; storage errors (bad URI, missing bucket) are bad input."""
    try:
        uri = normalize(raw)
        try:
            return [(uri, storage.size(uri))]
        except StorageError:
            pass
        listed = storage.glob(uri) if has_glob(uri) else storage.list(uri)
        # Bookkeeping files (_SUCCESS, _manifest.json, .crc) sit beside data and are never data.
        found = [u for u in listed if not u.rsplit("/", 1)[-1].startswith(("_", "."))]
        if not found:
            raise PreprocessError(_nothing_found(raw, uri))
        return [(u, storage.size(u)) for u in found]
    except StorageError as exc:  # its message names the URI
        raise PreprocessError(str(exc)) from None


def _nothing_found(raw: str, uri: str) -> str:
    if has_glob(uri):
        return f"input {raw}: no files match {uri}"
    return f"input {raw}: no such file, and no files under that {'prefix' if is_s3(uri) else 'path'}"


def describe_inputs(storage: Storage, files: list[tuple[str, int]]) -> list[InputFile]:
    """Each file's compression and dialect, from its first bytes; files without content
    (empty, or a gzip of nothing) are left out, and an input with none at all is an error."""
    described = [f for uri, size in files if (f := _describe(storage, uri, size)) is not None]
    if not described:
        raise PreprocessError(f"the input is empty: {', '.join(u for u, _ in files)}")
    return described


def _describe(storage: Storage, uri: str, size: int) -> InputFile | None:
    if size == 0:
        return None
    head = storage.read_bytes(uri, 0, min(size, _SNIFF_BYTES))
    compressed = is_gzip(uri, head)
    try:
        if compressed:
            head = read_gzip(storage, uri, _SNIFF_BYTES)  # the dialect is in the text, not the gzip bytes
        return InputFile(uri, size, compressed, criteo.sniff(head, uri)) if head else None
    except ValueError as exc:
        raise PreprocessError(str(exc)) from None


def plan_splits(files: list[InputFile], *, split_bytes: int, min_splits: int) -> list[_Split]:
    """Cut plain files into line-aligned byte ranges: at least ``min_splits`` in all,
    none much larger than ``split_bytes``, each file in proportion to its size.

    A gzip file cannot be entered in the middle, so it is one split however large;
    the plain files share what remains of ``min_splits``.
    """
    plain = sum(f.size for f in files if not f.compressed)
    wanted = max(1, min_splits - sum(f.compressed for f in files))
    target = min(split_bytes, max(1, -(-plain // wanted)))
    splits: list[_Split] = []
    for f in files:
        ranges = [(0, f.size)] if f.compressed else plan_ranges(f.size, -(-f.size // target))
        splits.extend(_Split(f, start, end) for start, end in ranges)
    return splits


def _map(executor: ServerlessExecutor, events: list[dict], progress: Callable[[int, int], None] | None) -> list[dict]:
    """Fan the events out. A worker that found a file unreadable reports bad input,
    which the caller gets as a PreprocessError, not as a failed invocation."""
    try:
        return executor.map(events, progress=progress)
    except InvocationError as exc:
        if exc.error_type == CorruptInputError.__name__:
            raise PreprocessError(exc.error_message) from None
        raise


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
    files = describe_inputs(storage, expand_inputs(storage, config.inputs))
    splits = plan_splits(files, split_bytes=config.split_bytes, min_splits=config.workers)
    log.info("preprocessing %d file(s) (%d gzip), %d bytes, in %d splits",
             len(files), sum(f.compressed for f in files), sum(f.size for f in files), len(splits))
    storage.delete(manifest_uri(output))

    features = config.features()
    split_params = {"test_fraction": config.test_fraction, "seed": config.split_seed}
    base = {"format": config.format, "split": split_params}
    stats_events = [
        {**base, "task": "preprocess.stats", "source": s.source(), "dialect": s.file.dialect.to_json(),
         "features": features.to_json()}
        for s in splits
    ]
    first = _map(executor, stats_events, _stage(progress, "statistics"))

    stats = _merge_stats(first)
    features = criteo.CriteoFeatures(**{**asdict(features), "stats": stats})
    counts = _counts(first)
    too_many = counts["rows_rejected"] > config.max_rejected_fraction * max(1, counts["rows_read"])

    n = len(splits)
    first_lines = _first_lines(splits, first)
    transform_events = [
        {**base, "task": "preprocess.transform", "source": s.source(), "dialect": s.file.dialect.to_json(),
         "features": features.to_json(), "first_line": first_lines[i],
         "row_group_rows": config.row_group_rows, "write_shards": not too_many,
         "outputs": {
             "train": join(output, "shards", f"part-{i:05d}.parquet"),
             "test": join(output, "shards", f"part-{n + i:05d}.parquet"),
             "rejected": join(output, "rejected", f"split-{i:05d}.jsonl"),
         }}
        for i, s in enumerate(splits)
    ]
    second = _map(executor, transform_events, _stage(progress, "transform"))
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
        raise PreprocessError(f"no training rows were produced from {', '.join(f.uri for f in files)}")
    manifest = Manifest(
        kind="sparse",
        feature_dim=features.feature_dim,
        shards=shards,
        transform=features.to_json(),
        split={"method": "row_hash", **split_params},
        counts=counts,
        source={"format": config.format, "files": [f.uri for f in files], "splits": len(splits)},
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
        if split.file.uri != previous:
            line, previous = 1, split.file.uri
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
            per_file[(split.file.uri, reason)] += n
    (worst_file, worst_reason), worst_n = per_file.most_common(1)[0]
    fraction = counts["rows_rejected"] / max(1, counts["rows_read"])
    return (
        f"{counts['rows_rejected']} of {counts['rows_read']} rows ({fraction:.2%}) were rejected, more than "
        f"max_rejected_fraction={config.max_rejected_fraction:g}; the worst is {worst_file} with {worst_n} "
        f"rows rejected for {worst_reason}. The rejected rows, with line numbers, are under "
        f"{join(output, 'rejected')}/; no {MANIFEST_NAME} was written."
    )
