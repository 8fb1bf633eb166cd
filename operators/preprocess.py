"""CirrusPreprocessOperator: raw data to training-ready Parquet shards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias

from cirrus_airflow.preprocess import PreprocessConfig, PreprocessError, run_preprocess
from cirrus_airflow.storage import is_s3, local_path
from operators.base import CirrusBaseOperator
from operators.triggers import PreprocessTrigger


def output_asset(output_uri: str) -> Asset:
    """The Airflow Asset a preprocessing output is: ``s3://...`` as it is, a local folder as ``file://``."""
    if is_s3(output_uri):
        return Asset(uri=output_uri.rstrip("/"))
    return Asset(uri=local_path(output_uri).resolve().as_uri())


class CirrusPreprocessOperator(CirrusBaseOperator):
    """Preprocess raw data into Parquet shards and a manifest, fanned out over serverless
    workers in passes: statistics, transformation (tabular data goes without it: its
    features are scattered with the statistics), shuffle into shards.

    :param input_uris: one URI or a list of them; templated. Each is a file, a folder or
        S3 prefix (all files under it), or a glob (``data/day_*.tsv``,
        ``s3://bucket/logs/2026-*/part-*.tsv.gz``; ``*`` also crosses ``/``). Files are taken
        in sorted order, so a retry writes the same shards. Gzip files are decompressed by
        the workers, one worker per file: split large data into several ``.gz`` parts.
    :param output_uri: folder for ``shards/``, ``transform/``, ``rejected/`` and
        ``_manifest.json``; templated. It is the task's Asset (outlet): declared as such when
        the URI is fixed, and through an AssetAlias named ``cirrus-preprocess:<task_id>``
        when it is templated, unless ``outlets`` is given.
    :param test_input_uris: held-out rows from separate inputs, instead of ``test_fraction``.
    :param format: ``criteo`` (tab-separated, or CSV with a header), ``libsvm``, ``ratings``,
        or ``csv``/``parquet`` with a ``schema``: ``{"label": NAME, "numeric": [NAMES],
        "categorical": [NAMES]}``.
    :param hash_bits, hash_seed, signed_hash, crosses, min_count: how categorical values
        become features (criteo); ``crosses`` are pairs of column names, e.g. ``[("C1", "C2")]``.
    :param normalize: ``minmax``, ``standard`` or ``none`` for numeric values.
    :param log_transform: apply sign(x)*log(1+|x|) to numeric columns first (criteo).
    :param missing: a missing number as an ``indicator`` feature, or ``impute``-d with the mean.
    :param index_base, num_features: LIBSVM index base (``auto``, ``0``, ``1``) and size.
    :param columns: ratings column names (user, item, rating) when the header is unusual.
    :param test_fraction: share of rows held out for testing, chosen by a row hash (0.2).
    :param shard_rows: target rows per output shard; ``row_group_rows``: rows per read.
    :param workers: minimum number of splits (parallel map tasks).
    :param max_rejected_fraction: fail when more rows than this are malformed.
    :param deferrable: wait for the fan-out in the triggerer, not in a worker slot.

    Returns (XCom) the summary: rows read, written and rejected (by reason), shard
    count, feature dimension and the manifest URI.
    """

    template_fields: Sequence[str] = (
        "input_uris", "test_input_uris", "output_uri", "serverless_executor", "function_name",
    )

    def __init__(
        self,
        *,
        input_uris: str | list[str],
        output_uri: str,
        test_input_uris: str | list[str] | None = None,
        format: str = "criteo",
        hash_bits: int = 18,
        hash_seed: int = 0,
        signed_hash: bool = False,
        crosses: Sequence[tuple[str, str]] = (),
        min_count: int = 1,
        normalize: str = "minmax",
        log_transform: bool = True,
        missing: str = "indicator",
        index_base: str = "auto",
        num_features: int | None = None,
        columns: tuple[str, str, str] | None = None,
        schema: dict | None = None,
        test_fraction: float | None = None,
        split_seed: int = 0,
        shard_rows: int = 250_000,
        row_group_rows: int = 4096,
        workers: int = 4,
        max_rejected_fraction: float = 0.01,
        deferrable: bool = False,
        **kwargs: Any,
    ) -> None:
        self._alias = None
        if "outlets" not in kwargs:
            if "{{" in output_uri:
                self._alias = AssetAlias(f"cirrus-preprocess:{kwargs.get('task_id')}")
                kwargs["outlets"] = [self._alias]
            else:
                kwargs["outlets"] = [output_asset(output_uri)]
        super().__init__(**kwargs)
        self.input_uris = input_uris
        self.test_input_uris = test_input_uris
        self.output_uri = output_uri
        self.format = format
        self.hash_bits = hash_bits
        self.hash_seed = hash_seed
        self.signed_hash = signed_hash
        self.crosses = [tuple(pair) for pair in crosses]
        self.min_count = min_count
        self.normalize = normalize
        self.log_transform = log_transform
        self.missing = missing
        self.index_base = index_base
        self.num_features = num_features
        self.columns = columns
        self.schema = schema
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.shard_rows = shard_rows
        self.row_group_rows = row_group_rows
        self.workers = workers
        self.max_rejected_fraction = max_rejected_fraction
        self.deferrable = deferrable
        self._config().validate()

    def _config(self) -> PreprocessConfig:
        params = {f.name: getattr(self, f.name) for f in fields(PreprocessConfig)
                  if f.name not in ("inputs", "output", "test_inputs") and hasattr(self, f.name)}
        return PreprocessConfig(inputs=_uris(self.input_uris), output=self.output_uri,
                                test_inputs=_uris(self.test_input_uris), **params)

    def execute(self, context: Any) -> dict:
        config = self._config()
        hook = self.hook
        if self.deferrable:
            self.defer(
                trigger=PreprocessTrigger.for_run(config, hook.settings, self.aws_conn_id),
                method_name="execute_complete",
                timeout=self.execution_timeout or timedelta(days=1),
            )

        def progress(stage: str, done: int, total: int) -> None:
            self.log.info("%s: %d/%d done", stage, done, total)

        with hook.get_executor() as executor:
            with self._cancellable(executor.cancel):
                summary = run_preprocess(config, storage=hook.get_storage(), executor=executor, progress=progress)
        return self._report(context, summary)

    def execute_complete(self, context: Any, event: dict) -> dict:
        """Resume after the trigger: its event carries the summary, or why the run failed."""
        return self._report(context, self._trigger_result(event, "summary", what="preprocessing",
                                                          bad_input=PreprocessError))

    def _report(self, context: Any, summary: dict) -> dict:
        self.log.info(
            "read %d rows, wrote %d (%d train, %d test) in %d shards, rejected %d %s; manifest %s",
            summary["rows_read"], summary["rows_written"], summary["train_rows"], summary["test_rows"],
            summary["shards"], summary["rows_rejected"], summary["rejected_by_reason"] or "", summary["manifest_uri"],
        )
        if self._alias is not None:
            context["outlet_events"][self._alias].add(output_asset(summary["output"]))
        return summary


def _uris(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
