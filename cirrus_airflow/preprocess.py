"""The preprocessing driver: plan splits, fan out the passes, write the manifest last.

The driver only plans and merges; every byte of input is read by the map tasks in
``lambda_pkg.preprocess``, on whichever serverless executor it is given (the driver
reads only the first bytes of each file, to tell its dialect and compression).

    pass 1  preprocess.stats      one task per split: counts, bad rows, statistics
            (driver)              merge the statistics into the fitted transform
    pass 2  preprocess.transform  one task per split: features, rejected rows, and
                                  the rows scattered into shuffle pieces
    pass 3  preprocess.combine    one task per shard: gather, permute, write Parquet

Tabular data skips pass 2, whose parse is most of the work: its fitted part (scaling,
missing values, rare buckets) needs no other row, so pass 1 scatters the unscaled
features and pass 3 finishes them. Pass 1 then also writes the rejected rows, and
``preprocess.rejects`` renumbers them once every split's first line is known.

Inputs are files, folders/prefixes, globs (``data/day_*.tsv``,
``s3://bucket/logs/2026-*/part-*.tsv.gz``) or lists of them; plain text is cut into
byte ranges, a gzip file is one split of its own. Test rows are either a seeded hash
share of the input (``test_fraction``) or separate files (``test_inputs``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cirrus_airflow import hashing
from cirrus_airflow.executor import InvocationError, ServerlessExecutor
from cirrus_airflow.formats.text import CorruptInputError, is_gzip, plan_ranges, read_gzip
from cirrus_airflow.input_formats import (
    FORMATS,
    SCHEMA_FORMATS,
    InputFormat,
    criteo_transform,
    input_format,
    schema_transform,
)
from cirrus_airflow.numeric import NORMALIZERS
from cirrus_airflow.shards import MANIFEST_NAME, Manifest, manifest_uri, write_manifest
from cirrus_airflow.shuffle import shard_count
from cirrus_airflow.storage import Storage, StorageError, has_glob, is_s3, join, normalize
from cirrus_airflow.transforms.ratings import RatingsTransform
from cirrus_airflow.transforms.sparse import SparseTransform
from cirrus_airflow.transforms.tabular import TabularTransform
from cirrus_airflow.transforms.workspace import TRANSFORM, WORK, Workspace

log = logging.getLogger(__name__)

DEFAULT_TEST_FRACTION = 0.2
Progress = Callable[[str, int, int], None]
_SNIFF_BYTES = 1 << 16


class PreprocessError(RuntimeError):
    """The input cannot be preprocessed as asked; the message says why and where."""


@dataclass
class PreprocessConfig:
    """What to preprocess and how; validated before any work starts.

    Format options: ``criteo`` uses the tabular parameters (hashing, scaling, missing
    values, crosses of categorical columns such as ``[("C1", "C2")]``, ``min_count``);
    ``libsvm`` uses ``normalize``, ``index_base`` and ``num_features``; ``ratings`` uses
    ``columns`` (the user, item and rating column names when the header is unusual);
    ``csv`` and ``parquet`` need a ``schema`` (``{"label": NAME, "numeric": [NAMES],
    "categorical": [NAMES]}``) and then take the same parameters as ``criteo``.
    """

    inputs: list[str]
    output: str
    format: str = "criteo"
    test_inputs: list[str] = field(default_factory=list)
    hash_bits: int = 18
    hash_seed: int = 0
    log_transform: bool = True
    normalize: str = "minmax"
    missing: str = "indicator"
    signed_hash: bool = False
    crosses: list[tuple[str, str]] = field(default_factory=list)
    min_count: int = 1
    index_base: str = "auto"
    num_features: int | None = None
    columns: tuple[str, str, str] | None = None
    schema: dict | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    shard_rows: int = 250_000
    row_group_rows: int = 4096
    split_bytes: int = 32 << 20
    block_bytes: int = 32 << 20
    workers: int = 4
    max_rejected_fraction: float = 0.01

    def validate(self) -> None:
        for name in ("inputs", "test_inputs"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a list of URIs, got the string {getattr(self, name)!r}; "
                                 "wrap it in a list")
        if not self.inputs:
            raise ValueError("inputs is empty: give at least one input URI (a file, a folder/prefix or a glob)")
        if not self.output:
            raise ValueError("output is empty: give the URI of a folder (local path or s3://bucket/prefix)")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.normalize not in NORMALIZERS:  # every format but ratings scales something
            raise ValueError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if self.test_fraction is not None:
            if self.test_inputs:
                raise ValueError("give either test_inputs or test_fraction, not both: with test_inputs every "
                                 "input row is a training row")
            if not 0.0 <= self.test_fraction < 1.0:
                raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        for name, low in (("row_group_rows", 1), ("shard_rows", 1), ("split_bytes", 1024), ("block_bytes", 1024),
                          ("workers", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.shard_rows < self.row_group_rows:
            raise ValueError(f"shard_rows ({self.shard_rows}) must be at least row_group_rows "
                             f"({self.row_group_rows}): a shard holds whole row groups")
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError(f"max_rejected_fraction must be in [0, 1], got {self.max_rejected_fraction}")
        self.transform()  # the transform checks its own parameters (hash_bits, crosses, min_count, ...)

    @property
    def effective_test_fraction(self) -> float:
        if self.test_inputs:
            return 0.0
        return DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction

    def transform(self) -> TabularTransform | SparseTransform | RatingsTransform:
        """The transform before fitting: its parameters, no statistics yet."""
        if self.format == "libsvm":
            return SparseTransform(normalize=self.normalize, index_base=str(self.index_base),
                                   num_features=self.num_features)
        if self.format == "ratings":
            return RatingsTransform()
        params = dict(
            hash_bits=self.hash_bits, hash_seed=self.hash_seed, log_transform=self.log_transform,
            normalize=self.normalize, missing=self.missing, signed_hash=self.signed_hash,
            crosses=tuple(tuple(pair) for pair in self.crosses), min_count=self.min_count,
        )
        if self.format in SCHEMA_FORMATS:
            if not self.schema:
                raise ValueError(f"format {self.format!r} needs a schema: {{'label': NAME, 'numeric': [NAMES], "
                                 "'categorical': [NAMES]}")
            return schema_transform(self.schema, **params)
        return criteo_transform(**params)

    def input_format(self) -> InputFormat:
        if self.format == "libsvm":
            return input_format("libsvm", {"max_index": self.transform().parse_max_index()})
        if self.format == "ratings":
            return input_format("ratings", {"columns": list(self.columns) if self.columns else None})
        if self.format in SCHEMA_FORMATS:
            return input_format(self.format, {"hash_seed": self.hash_seed, "schema": self.schema})
        return input_format(self.format, {"hash_seed": self.hash_seed})


@dataclass(frozen=True)
class InputFile:
    """One input file as the planner sees it: how large, whether gzip, how it is written,
    and whether its rows are split by hash, all training or all test."""

    uri: str
    size: int
    compressed: bool
    dialect: dict
    role: str = "split"


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


def describe_inputs(storage: Storage, files: list[tuple[str, int]], fmt: InputFormat, *,
                    role: str = "split") -> list[InputFile]:
    """Each file's compression and dialect, from its first bytes; files without content
    (empty, or a gzip of nothing) are left out, and an input with none at all is an error."""
    described = [f for uri, size in files if (f := _describe(storage, uri, size, fmt, role)) is not None]
    if not described:
        raise PreprocessError(f"the input is empty: {', '.join(u for u, _ in files)}")
    return described


def _describe(storage: Storage, uri: str, size: int, fmt: InputFormat, role: str) -> InputFile | None:
    if size == 0:
        return None
    if fmt.row_groups:
        try:
            layout = fmt.describe(storage, uri)
        except ValueError as exc:
            raise PreprocessError(str(exc)) from None
        return InputFile(uri, size, False, layout, role) if sum(layout["rows"]) else None
    head = storage.read_bytes(uri, 0, min(size, _SNIFF_BYTES))
    compressed = is_gzip(uri, head)
    try:
        if compressed:
            head = read_gzip(storage, uri, _SNIFF_BYTES)  # the dialect is in the text, not the gzip bytes
        return InputFile(uri, size, compressed, fmt.sniff(head, uri), role) if head else None
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
        if "rows" in f.dialect:  # Parquet: runs of whole row groups
            ranges = _row_group_ranges(f.dialect["bytes"], target)
        elif f.compressed:
            ranges = [(0, f.size)]
        else:
            ranges = plan_ranges(f.size, -(-f.size // target))
        splits.extend(_Split(f, start, end) for start, end in ranges)
    return splits


def _row_group_ranges(sizes: list[int], target: int) -> list[tuple[int, int]]:
    """Consecutive row groups, closed into a split once it holds ``target`` bytes."""
    ranges, start, held = [], 0, 0
    for g, size in enumerate(sizes):
        held += size
        if held >= target:
            ranges.append((start, g + 1))
            start, held = g + 1, 0
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


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
    rerun never looks finished), stale shards go before the new manifest is written,
    and the run's scratch files (``_work/``) go whether it succeeds or fails.
    """
    config.validate()
    started = time.monotonic()
    run = _Run(config, storage, executor, progress)
    try:
        first = run.statistics()
        transform = run.fit(first)
        mapped = run.place_rejects(first) if run.scatters_first else run.transform(transform, first)
        counts = _counts(mapped, blank=run.blank_lines)
        shards = run.shards(mapped, counts, transform)
    finally:
        storage.delete_tree(join(run.output, WORK))
    manifest = Manifest(
        kind=transform.kind,
        feature_dim=transform.feature_dim,
        shards=shards,
        transform=transform.to_json(),
        split=_split_record(config, run.files),
        counts={k: v for k, v in counts.items() if k != "train_positives"},
        source={"format": config.format, "format_options": run.fmt.options, "files": [f.uri for f in run.files],
                "splits": len(run.splits)},
        row_group_rows=config.row_group_rows,
        label_stats=_label_stats(transform, counts),
    )
    uri = write_manifest(storage, run.output, manifest)
    return {
        **manifest.counts,
        "format": config.format,
        "shards": sum(len(v) for v in shards.values()),
        "shard_bytes": sum(e["bytes"] for v in shards.values() for e in v),
        "manifest_uri": uri,
        "output": run.output,
        "feature_dim": transform.feature_dim,
        "seconds": round(time.monotonic() - started, 3),
    }


class _Run:
    """One preprocessing run: its plan, and the three passes as the driver sees them."""

    def __init__(self, config: PreprocessConfig, storage: Storage, executor: ServerlessExecutor,
                 progress: Progress | None) -> None:
        self.config, self.storage, self.executor, self.progress = config, storage, executor, progress
        self.output = normalize(config.output)
        self.fmt = config.input_format()
        self.files = _input_files(storage, config, self.fmt)
        self.splits = plan_splits(self.files, split_bytes=config.split_bytes, min_splits=config.workers)
        log.info("preprocessing %d file(s) (%d gzip), %d bytes, in %d splits", len(self.files),
                 sum(f.compressed for f in self.files), sum(f.size for f in self.files), len(self.splits))
        storage.delete(manifest_uri(self.output))
        for folder in (WORK, TRANSFORM):  # left by an earlier run; nothing finished refers to them now
            storage.delete_tree(join(self.output, folder))
        self.workspace = Workspace(storage, self.output)
        self.scatters_first = config.transform().finishes_after_shuffle
        self.shuffle_seed = hashing.derive_seed(config.split_seed, 1)
        self.too_many = False
        self.blank_lines = 0

    def _events(self, task: str, **fields: Any) -> list[dict]:
        base = {"task": task, "format": self.config.format, "format_options": self.fmt.options,
                "output": self.output, "block_bytes": self.config.block_bytes,
                "split": {"test_fraction": self.config.effective_test_fraction, "seed": self.config.split_seed}}
        return [{**base, "index": i, "role": s.file.role, "source": s.source(), "dialect": s.file.dialect,
                 **{k: v[i] if isinstance(v, list) else v for k, v in fields.items()}}
                for i, s in enumerate(self.splits)]

    def statistics(self) -> list[dict]:
        fields: dict[str, Any] = {"transform": self.config.transform().to_json()}
        if self.scatters_first:  # rejected rows go to _work/ first, numbered within their split
            fields.update(shuffle_seed=self.shuffle_seed, rejected_prefix=join(self.output, WORK, "rejected"))
        first = _map(self.executor, self._events("preprocess.stats", **fields), _stage(self.progress, "statistics"))
        counts = _counts(first)
        if not counts["rows_written"]:
            raise PreprocessError(_no_rows_message(self.files, counts))
        self.too_many = _too_many(self.config, counts)
        self.blank_lines = counts["blank_lines"]
        return first

    def fit(self, first: list[dict]) -> Any:
        try:
            return self.config.transform().fit([s for r in first for s in r["summaries"]], self.workspace)
        except ValueError as exc:
            raise PreprocessError(str(exc)) from None

    def place_rejects(self, first: list[dict]) -> list[dict]:
        """Move pass 1's rejected rows under ``rejected/``, renumbered from their file's first
        line (known now that every split's lines are counted), before any check can fail."""
        offsets = [line - 1 for line in _first_lines(self.splits, first)]
        wanted = [i for i, r in enumerate(first) if r["rejected_files"]]
        events = [{"task": "preprocess.rejects", "rejected_files": first[i]["rejected_files"],
                   "line_offset": offsets[i], "rejected_prefix": join(self.output, "rejected")} for i in wanted]
        placed = _map(self.executor, events, _stage(self.progress, "rejected rows")) if events else []
        mapped = [dict(r) for r in first]
        for i, result in zip(wanted, placed):
            mapped[i]["rejected_files"] = result["rejected_files"]
        if self.too_many:
            self._reject_run(mapped, _counts(mapped, blank=self.blank_lines))
        return mapped

    def transform(self, transform: Any, first: list[dict]) -> list[dict]:
        events = self._events("preprocess.transform", transform=transform.to_json(),
                              first_line=_first_lines(self.splits, first), rejected_prefix=join(self.output, "rejected"),
                              write=not self.too_many, shuffle_seed=self.shuffle_seed)
        second = _map(self.executor, events, _stage(self.progress, "transform"))
        counts = _counts(second, blank=self.blank_lines)
        if self.too_many or _too_many(self.config, counts):
            self._reject_run(second, counts)
        return second

    def _reject_run(self, mapped: list[dict], counts: dict) -> None:
        _remove_stale(self.storage, self.output, keep=_rejected_files(mapped))
        raise PreprocessError(_rejection_message(self.config, self.splits, mapped, counts, self.output))

    def shards(self, mapped: list[dict], counts: dict, transform: Any) -> dict[str, list[dict]]:
        """Pass 3. The shard counts come from the exact row counts of the pass that scattered."""
        plan = {part: shard_count(counts[f"{part}_rows"], self.config.shard_rows) for part in ("train", "test")}
        finish = transform.to_json() if self.scatters_first else None
        events = _combine_events(self.config, self.output, mapped, plan, self.shuffle_seed, finish)
        results = _map(self.executor, events, _stage(self.progress, "shards"))
        shards: dict[str, list[dict]] = {"train": [], "test": []}
        for event, result in zip(events, results):
            if result["rows"]:
                shards[event["part"]].append({"path": event["uri"][len(self.output) + 1:], "rows": result["rows"],
                                              "row_groups": result["row_groups"], "bytes": result["bytes"]})
        _remove_stale(self.storage, self.output, keep=_rejected_files(mapped) | {e["uri"] for e in events})
        if not shards["train"]:
            raise PreprocessError(f"no training rows were produced from {', '.join(f.uri for f in self.files)}")
        return shards


def _rejected_files(results: list[dict]) -> set[str]:
    return {uri for r in results for uri in r["rejected_files"]}


def _input_files(storage: Storage, config: PreprocessConfig, fmt: InputFormat) -> list[InputFile]:
    role = "train" if config.test_inputs else "split"
    files = describe_inputs(storage, expand_inputs(storage, config.inputs), fmt, role=role)
    if not config.test_inputs:
        return files
    tests = describe_inputs(storage, expand_inputs(storage, config.test_inputs), fmt, role="test")
    both = sorted({f.uri for f in files} & {f.uri for f in tests})
    if both:
        raise PreprocessError(f"{both[0]} is both a training input and a test input; a row must be one or the other")
    return files + tests


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _counts(results: list[dict], *, blank: int | None = None) -> dict:
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r["rejected_by_reason"])
    rows = sum(r["rows"] for r in results)
    rejected = sum(r["rejected"] for r in results)
    counts: dict[str, Any] = {
        "rows_read": rows + rejected,
        "rows_written": rows,
        "rows_rejected": rejected,
        "rejected_by_reason": dict(sorted(reasons.items())),
        "blank_lines": sum(r["blank"] for r in results) if blank is None else blank,
        "train_rows": sum(r["train_rows"] for r in results),
        "test_rows": sum(r["test_rows"] for r in results),
        "train_positives": sum(r["train_positives"] for r in results),
    }
    return counts


def _too_many(config: PreprocessConfig, counts: dict) -> bool:
    return counts["rows_rejected"] > config.max_rejected_fraction * max(1, counts["rows_read"])


def _combine_events(config: PreprocessConfig, output: str, mapped: list[dict], plan: dict[str, int],
                    seed: int, finish: dict | None) -> list[dict]:
    """One event per shard, each naming every piece of its part in split and block order (so
    a rerun joins them alike), and the fitted transform when the rows are finished there."""
    events = []
    for part in ("train", "test"):
        pieces = [uri for r in mapped for uri in r["pieces"][part]]
        for shard in range(plan[part]):
            event = {"task": "preprocess.combine", "part": part, "pieces": pieces, "shard": shard,
                     "shards": plan[part], "output": output,
                     "uri": join(output, "shards", f"part-{len(events):05d}.parquet"),
                     "row_group_rows": config.row_group_rows,
                     "seed": hashing.derive_seed(seed, shard, part == "test")}
            events.append(event if finish is None else {**event, "transform": finish})
    return events


def _first_lines(splits: list[_Split], results: list[dict]) -> list[int]:
    """The 1-based line number at which each split starts in its file."""
    out, line, previous = [], 1, None
    for split, result in zip(splits, results):
        if split.file.uri != previous:
            line, previous = 1, split.file.uri
        out.append(line)
        line += result["lines"]
    return out


def _split_record(config: PreprocessConfig, files: list[InputFile]) -> dict:
    if config.test_inputs:
        return {"method": "inputs", "test_files": [f.uri for f in files if f.role == "test"]}
    return {"method": "row_hash", "test_fraction": config.effective_test_fraction, "seed": config.split_seed}


def _label_stats(transform: Any, counts: dict) -> dict:
    if transform.kind != "sparse":
        return {}
    return {"train_positive_rate": counts["train_positives"] / max(1, counts["train_rows"])}


def _remove_stale(storage: Storage, output: str, *, keep: set[str]) -> None:
    for folder in ("shards", "rejected"):
        for uri in storage.list(join(output, folder)):
            if uri not in keep:
                storage.delete(uri)


def _no_rows_message(files: list[InputFile], counts: dict) -> str:
    where = ", ".join(f.uri for f in files)
    if counts["rows_rejected"]:
        reasons = ", ".join(f"{n} {r}" for r, n in counts["rejected_by_reason"].items())
        return (f"no usable rows in {where}: all {counts['rows_rejected']} rows were rejected ({reasons}). "
                "Is this the right --format?")
    return f"the input has no rows, only blank lines or a header: {where}"


def _rejection_message(config: PreprocessConfig, splits: list[_Split], results: list[dict], counts: dict,
                       output: str) -> str:
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
