"""Batch prediction: raw rows in, one prediction a row out, through the model's own preprocessing.

A model folder (``<run>/model``) says how the raw data it was trained on was written
(the format and its options, such as the hash seed or the ratings columns) and holds
the fitted transform with its files (frequent buckets, feature scales, id mappings).
New rows are parsed and transformed exactly as the shards were, so a row scores here
as it did in the held-out evaluation; the preprocessing output need not exist any more.

Inputs are files, folders/prefixes or globs, as for preprocessing. They are read a
block at a time (plain text in line-aligned byte ranges, gzip as a stream, Parquet a
row group at a time), and a block's predictions leave memory once a part file is full,
so memory is set by the block and part sizes, never by the input. The output is a
folder that Parquet readers take as one data set:

    <output>/part-NNNNN.parquet   the predictions, in input order
    <output>/_rejected/           the rows that could not be scored, with line and reason
    <output>/_summary.json        the counts and metrics, written last

A folder without ``_summary.json`` is unfinished; a rerun replaces what an earlier run
wrote there (and nothing else).
"""

from __future__ import annotations

import io
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cirrus_airflow.formats import ParsedBlock
from cirrus_airflow.formats import ratings as ratings_format
from cirrus_airflow.formats.blocks import BLOCK_BYTES, gzip_line_blocks
from cirrus_airflow.formats.text import plan_ranges, read_line_range
from cirrus_airflow.input_formats import SCHEMA_FORMATS, InputFormat, input_format, transform_from_json
from cirrus_airflow.metrics import BinaryMetrics, RegressionMetrics
from cirrus_airflow.model_store import METADATA_NAME, WEIGHTS_NAME, load_metadata, load_weights
from cirrus_airflow.models.factorization import FactorModel
from cirrus_airflow.models.logistic import predict_margins, sigmoid
from cirrus_airflow.models.registry import factor_model
from cirrus_airflow.preprocess import InputFile, PreprocessError, describe_inputs, expand_inputs
from cirrus_airflow.rejects import write_rejects
from cirrus_airflow.storage import Storage, join, normalize
from cirrus_airflow.transforms.workspace import Workspace

SUMMARY_NAME = "_summary.json"
REJECTED = "_rejected"
# Rows of one part file: a part waits in memory until it is full.
PART_ROWS = 1_000_000
_PART = re.compile(r"part-\d{5}\.parquet$")

Progress = Callable[[str], None]


class PredictError(ValueError):
    """The rows cannot be scored as asked (no model there, no input, a format the model
    cannot read); the message says what to change."""


def run_predict(model_uri: str, inputs: list[str], output: str, *, storage: Storage, format: str | None = None,
                block_bytes: int = BLOCK_BYTES, part_rows: int = PART_ROWS,
                progress: Progress | None = None) -> dict:
    """Score every row of ``inputs`` with the model at ``model_uri`` (its ``model`` folder
    or the training run's folder) into Parquet under ``output``; returns the summary.

    ``format`` defaults to the format of the data the model was trained on. Rows that
    cannot be scored are counted by reason and written to ``<output>/_rejected/``; as
    every input row carries its label or rating, the summary also has the metrics of
    the predictions (lr: log loss, accuracy, AUC; mf: RMSE, MAE).
    """
    started = time.monotonic()
    if isinstance(inputs, str) or not inputs:
        raise PredictError(f"inputs must be a non-empty list of URIs (files, folders/prefixes or globs), "
                           f"got {inputs!r}")
    model = load_model(storage, model_uri, format=format)
    files = _input_files(storage, inputs, model.fmt)
    output = _prepare_output(storage, output)
    parts = _Parts(storage, output, part_rows)
    tally = _Tally()
    for f in files:
        for block, data, first_line in _blocks(storage, f, model.fmt, block_bytes):
            rows = model.scorer.usable(block, data, first_line)
            if write_rejects(storage, join(output, REJECTED, f"block-{tally.blocks:05d}.jsonl"), f.uri,
                             block.rejected):
                tally.rejected_files += 1
            tally.add(block, len(rows))
            if len(rows):
                parts.add(_table(f.uri, model.scorer.predict(rows)))
            if progress is not None:
                progress(f"predict  {f.uri.rsplit('/', 1)[-1]}  {tally.scored:,} rows scored")
    parts.close()
    if not tally.scored:
        raise PredictError(_nothing_scored(files, tally, output))
    summary = {
        "model": model.kind,
        "model_folder": model.uri,
        "format": model.fmt.name,
        "inputs": [f.uri for f in files],
        **tally.to_json(),
        **model.scorer.metrics(),
        "output": output,
        "parts": len(parts.written),
        "rejected_uri": join(output, REJECTED) if tally.rejected_files else None,
        "seconds": round(time.monotonic() - started, 3),
    }
    storage.write_text(join(output, SUMMARY_NAME), json.dumps(summary, indent=1, sort_keys=True))
    return summary


@dataclass(frozen=True)
class LoadedModel:
    """A saved model ready to score raw rows: its kind, where it is, how its input is
    parsed, and the scorer holding the weights and the fitted transform."""

    kind: str
    uri: str
    fmt: InputFormat
    scorer: _ClickScorer | _RatingScorer


def load_model(storage: Storage, model_uri: str, *, format: str | None = None) -> LoadedModel:
    """The model at ``model_uri`` with the transform and input format of its training data."""
    uri = _model_folder(storage, normalize(model_uri))
    meta = load_metadata(storage, uri)
    missing = [k for k in ("model", "params", "transform", "input") if k not in meta]
    if missing:
        raise PredictError(f"{join(uri, METADATA_NAME)} lacks {', '.join(missing)}: it was not written by a "
                           "training run of this version of the package; retrain to get a model that can score "
                           "raw rows")
    fmt = _input_format(format, meta["input"])
    table = load_weights(storage, join(uri, WEIGHTS_NAME))
    _check_shape(meta["model"], meta["params"], table, uri)
    workspace = Workspace(storage, uri)  # the transform's files were copied into the model folder
    if meta["model"] == "mf":
        scorer: _ClickScorer | _RatingScorer = _RatingScorer.load(meta["params"], meta["transform"], table, workspace)
    else:
        scorer = _ClickScorer(transform_from_json(meta["transform"]).load(workspace), table)
    return LoadedModel(meta["model"], uri, fmt, scorer)


def _model_folder(storage: Storage, uri: str) -> str:
    """The folder holding model.json: the one given, or the ``model`` folder of a training run."""
    for folder in (uri, join(uri, "model")):
        if storage.exists(join(folder, METADATA_NAME)):
            return folder
    raise PredictError(f"no {METADATA_NAME} under {uri} or {join(uri, 'model')}: give the model folder of a "
                       "finished training run (its summary's model_uri) or the run's output folder")


def _input_format(name: str | None, source: dict) -> InputFormat:
    """The format of the training data, or ``name`` if it reads the same columns (CSV and
    Parquet with one schema); its options (hash seed, schema, columns) are the training data's."""
    trained = source["format"]
    same = {trained, *SCHEMA_FORMATS} if trained in SCHEMA_FORMATS else {trained}
    if name is not None and name not in same:
        raise PredictError(f"--format {name} does not match this model: it was trained on {trained} data, and "
                           f"scores rows written as {' or '.join(sorted(same))} (leave --format out for {trained})")
    return input_format(name or trained, source.get("format_options"))


def _check_shape(kind: str, params: dict, table: np.ndarray, uri: str) -> None:
    """Catch a weights file that is not the one model.json describes before it scores anything."""
    if kind == "lr":
        expected = (int(params["bias_key"]) + 1, 1)
    elif kind == "mf":
        expected = (int(params["num_users"]) + int(params["num_items"]), int(params["factors"]) + 1)
    else:
        raise PredictError(f"{join(uri, METADATA_NAME)}: unknown model {kind!r} (this package scores lr and mf)")
    if table.shape != expected:
        raise PredictError(f"{join(uri, WEIGHTS_NAME)} holds a {table.shape} table, but {METADATA_NAME} describes "
                           f"{expected}: the folder mixes two models; retrain, or restore both files of one run")


def _input_files(storage: Storage, inputs: list[str], fmt: InputFormat) -> list[InputFile]:
    try:
        return describe_inputs(storage, expand_inputs(storage, inputs), fmt)
    except PreprocessError as exc:
        raise PredictError(str(exc)) from None


def _prepare_output(storage: Storage, output: str) -> str:
    """The output folder, emptied of an earlier run's files: its summary first, so that a
    run stopped half-way is never taken for a finished one."""
    output = normalize(output)
    if storage.exists(output):
        raise PredictError(f"--output {output} is a file; predictions are a folder of Parquet parts: give a folder")
    storage.delete(join(output, SUMMARY_NAME))
    for uri in storage.list(output):
        if _PART.fullmatch(uri[len(output) + 1:]):  # its own parts only, none in a subfolder
            storage.delete(uri)
    storage.delete_tree(join(output, REJECTED))
    return output


def _blocks(storage: Storage, f: InputFile, fmt: InputFormat, block_bytes: int
            ) -> Iterator[tuple[ParsedBlock, bytes, int]]:
    """Each block of a file, parsed, with its text and its first line number (line
    numbers run on from block to block, as in the file; only the first block has a header)."""
    first_line = 1
    if fmt.row_groups:
        for group in range(len(f.dialect["rows"])):
            block = fmt.parse(fmt.read_group(storage, f.uri, group), first_line=first_line)
            yield block, b"", first_line
            first_line += block.lines
        return
    header = bool(f.dialect.get("header", False))
    for data in _text_blocks(storage, f, block_bytes):
        block = fmt.parse(data, f.dialect, first_line=first_line, skip_header=header)
        header = False
        yield block, data, first_line
        first_line += block.lines


def _text_blocks(storage: Storage, f: InputFile, block_bytes: int) -> Iterator[bytes]:
    """The file's whole lines in blocks of about ``block_bytes``: byte ranges of a plain
    file (each read on its own), or the stream of a gzip file cut on line ends."""
    if f.compressed:
        yield from gzip_line_blocks(storage, f.uri, block_bytes=block_bytes)
        return
    for start, end in plan_ranges(f.size, -(-f.size // block_bytes)):
        data = read_line_range(storage, f.uri, start, end, f.size)
        if data:
            yield data


class _ClickScorer:
    """Logistic regression on tabular or LIBSVM rows: each row's click probability."""

    def __init__(self, transform: Any, table: np.ndarray) -> None:
        self.transform = transform
        self.weights = table.reshape(-1)  # one weight a feature, the bias last
        self.scored = BinaryMetrics.empty()

    def usable(self, block: ParsedBlock, data: bytes, first_line: int) -> Any:
        """The rows the fitted transform can take: a LIBSVM row with an index outside the
        training feature space joins the block's rejected rows, as in preprocessing."""
        return self.transform.usable(block, data, first_line)

    def predict(self, rows: Any) -> dict[str, np.ndarray]:
        features = self.transform.apply(rows)
        margins = predict_margins(features, self.weights)
        self.scored = self.scored.merge(BinaryMetrics.of(margins, features.labels))
        return {"line": rows.lines, "label": features.labels, "probability": sigmoid(margins)}

    def metrics(self) -> dict:
        m = self.scored
        return {"logloss": _finite(m.log_loss), "accuracy": _finite(m.accuracy), "auc": _finite(m.auc)}


class _RatingScorer:
    """Matrix factorisation on raw (user, item) ids. An id the training data did not have
    is a cold start, scored with what is known rather than refused (see ``cold_start``)."""

    def __init__(self, model: FactorModel, table: np.ndarray, users: pa.Array, items: pa.Array) -> None:
        self.model, self.table, self.users, self.items = model, table, users, items
        self.scored = RegressionMetrics.empty()
        self.unknown_users = self.unknown_items = 0

    @classmethod
    def load(cls, params: dict, transform: dict, table: np.ndarray, workspace: Workspace) -> _RatingScorer:
        """With the id mappings the transform saved beside the shards (index i is the i-th id)."""
        users, items = (workspace.read_table(workspace.artifact_uri(transform[name])).column("id").combine_chunks()
                        for name in ("user_ids", "item_ids"))
        return cls(factor_model(params), table, users, items)

    def usable(self, block: ParsedBlock, data: bytes, first_line: int) -> Any:
        return block.rows

    def predict(self, rows: Any) -> dict[str, Any]:
        users = ratings_format.map_ids(rows.users, self.users)
        items = ratings_format.map_ids(rows.items, self.items)
        predicted = cold_start(self.model, users, items, self.table)
        self.scored = self.scored.merge(RegressionMetrics.of(predicted, rows.ratings))
        self.unknown_users += int((users < 0).sum())
        self.unknown_items += int((items < 0).sum())
        return {"line": rows.lines, "user": rows.users, "item": rows.items, "rating": rows.ratings,
                "prediction": predicted, "known_user": users >= 0, "known_item": items >= 0}

    def metrics(self) -> dict:
        return {"rmse": _finite(self.scored.rmse), "mae": _finite(self.scored.mae),
                "rows_unknown_user": self.unknown_users, "rows_unknown_item": self.unknown_items}


def cold_start(model: FactorModel, users: np.ndarray, items: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Predicted ratings of (user, item) indices where -1 marks an id the model never saw.

    μ plus whatever is known: a known user's bias, a known item's bias, and the dot product
    of their factors only when both are known (an unknown side has no factors, and zero
    would be a guess that the other side's factors cannot correct). Where both are known
    this is ``FactorModel.predict``, to the last bit: the same sums in the same order.
    """
    known_user, known_item = users >= 0, items >= 0
    u = table[np.where(known_user, users, 0)]
    i = table[model.num_users + np.where(known_item, items, 0)]
    dot = np.where(known_user & known_item, np.einsum("nk,nk->n", u[:, :-1], i[:, :-1]), 0)
    return model.clip(model.mean + (dot + np.where(known_user, u[:, -1], 0) + np.where(known_item, i[:, -1], 0)))


def _table(source: str, columns: dict[str, Any]) -> pa.Table:
    """A block's predictions, the input file first (as a dictionary column: one copy of its
    name, however many rows)."""
    n = len(columns["line"])
    file = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([source]))
    return pa.table({"file": file, **columns})


class _Parts:
    """Predictions as ``part-NNNNN.parquet`` files of about ``part_rows`` rows each: blocks
    wait in memory only until they fill a part."""

    def __init__(self, storage: Storage, output: str, part_rows: int) -> None:
        self.storage, self.output, self.part_rows = storage, output, max(1, part_rows)
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.written: list[str] = []

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.rows += table.num_rows
        if self.rows >= self.part_rows:
            self.close()

    def close(self) -> None:
        """Write what is pending as one part."""
        if not self.pending:
            return
        sink = io.BytesIO()
        pq.write_table(pa.concat_tables(self.pending), sink, compression="zstd")
        uri = join(self.output, f"part-{len(self.written):05d}.parquet")
        self.storage.write_bytes(uri, sink.getvalue())
        self.written.append(uri)
        self.pending, self.rows = [], 0


class _Tally:
    """Counts over every block: lines, blank lines, rows scored and rejected by reason."""

    def __init__(self) -> None:
        self.blocks = self.scored = self.blank = self.rejected_files = 0
        self.reasons: Counter[str] = Counter()

    def add(self, block: ParsedBlock, scored: int) -> None:
        self.blocks += 1
        self.scored += scored
        self.blank += block.blank
        self.reasons.update(block.rejected.by_reason())

    def to_json(self) -> dict:
        rejected = sum(self.reasons.values())
        return {"rows_read": self.scored + rejected, "rows_scored": self.scored, "rows_rejected": rejected,
                "rejected_by_reason": dict(sorted(self.reasons.items())), "blank_lines": self.blank}


def _nothing_scored(files: list[InputFile], tally: _Tally, output: str) -> str:
    where = ", ".join(f.uri for f in files)
    counts = tally.to_json()
    if not counts["rows_rejected"]:
        return f"the input has no rows, only blank lines or a header: {where}"
    reasons = ", ".join(f"{n} {r}" for r, n in counts["rejected_by_reason"].items())
    return (f"no row of {where} could be scored: all {counts['rows_rejected']} were rejected ({reasons}); they are "
            f"under {join(output, REJECTED)}/. Is this the right --format?")


def _finite(x: float) -> float | None:
    """A metric for JSON: None where it is undefined (AUC of rows of one class)."""
    return x if math.isfinite(x) else None
