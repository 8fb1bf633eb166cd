"""CirrusPreprocessOperator: raw data to training-ready Parquet shards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from operators.base import CirrusBaseOperator


class CirrusPreprocessOperator(CirrusBaseOperator):
    """Preprocess raw data into sparse Parquet shards and a manifest, fanned out over
    serverless workers in two passes (statistics, then transformation).

    :param input_uris: one URI or a list of them; templated. Each is a file, a folder or
        S3 prefix (all files under it), or a glob (``data/day_*.tsv``,
        ``s3://bucket/logs/2026-*/part-*.tsv.gz``; ``*``, ``?`` and ``[...]`` as in fnmatch,
        ``*`` also crossing ``/``). Files are taken in sorted order, so a retry writes the
        same shards. Gzip files (``.gz``, or gzip content) are decompressed by the workers,
        one worker per file: split large data into several ``.gz`` parts.
    :param output_uri: folder for ``shards/``, ``rejected/`` and ``_manifest.json``; templated.
    :param format: input format (``criteo``: tab-separated or CSV with a header).
    :param hash_bits: categorical values are hashed into 2**hash_bits features.
    :param hash_seed: seed of the feature hash (keep it to transform new data alike).
    :param normalize: ``minmax``, ``standard`` or ``none`` for the numeric columns.
    :param log_transform: apply sign(x)*log(1+|x|) to numeric columns first.
    :param test_fraction: share of rows held out for testing, chosen by a row hash.
    :param workers: minimum number of splits (parallel map tasks).
    :param max_rejected_fraction: fail when more rows than this are malformed.

    Returns (XCom) the summary: rows read, written and rejected (by reason), shard
    count, feature dimension and the manifest URI.
    """

    template_fields: Sequence[str] = ("input_uris", "output_uri", "serverless_executor", "function_name")

    def __init__(
        self,
        *,
        input_uris: str | list[str],
        output_uri: str,
        format: str = "criteo",
        hash_bits: int = 18,
        hash_seed: int = 0,
        normalize: str = "minmax",
        log_transform: bool = True,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        workers: int = 4,
        row_group_rows: int = 4096,
        max_rejected_fraction: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.input_uris = input_uris
        self.output_uri = output_uri
        self.format = format
        self.hash_bits = hash_bits
        self.hash_seed = hash_seed
        self.normalize = normalize
        self.log_transform = log_transform
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.workers = workers
        self.row_group_rows = row_group_rows
        self.max_rejected_fraction = max_rejected_fraction
        self._config().validate()

    def _config(self) -> PreprocessConfig:
        inputs = [self.input_uris] if isinstance(self.input_uris, str) else list(self.input_uris)
        return PreprocessConfig(
            inputs=inputs,
            output=self.output_uri,
            format=self.format,
            hash_bits=self.hash_bits,
            hash_seed=self.hash_seed,
            log_transform=self.log_transform,
            normalize=self.normalize,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            row_group_rows=self.row_group_rows,
            workers=self.workers,
            max_rejected_fraction=self.max_rejected_fraction,
        )

    def execute(self, context: Any) -> dict:
        hook = self.hook
        config = self._config()

        def progress(stage: str, done: int, total: int) -> None:
            self.log.info("%s: %d/%d splits done", stage, done, total)

        with hook.get_executor() as executor:
            self._cancellable(executor.cancel)
            try:
                summary = run_preprocess(config, storage=hook.get_storage(), executor=executor, progress=progress)
            finally:
                self._cancellable(None)
        self.log.info(
            "read %d rows, wrote %d (%d train, %d test) in %d shards, rejected %d %s; manifest %s",
            summary["rows_read"], summary["rows_written"], summary["train_rows"], summary["test_rows"],
            summary["shards"], summary["rows_rejected"], summary["rejected_by_reason"] or "", summary["manifest_uri"],
        )
        return summary
