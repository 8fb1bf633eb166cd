import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cirrus_airflow.shards import (
    Manifest,
    RatingRows,
    ShardReader,
    SparseRows,
    read_manifest,
    write_manifest,
    write_shard,
)
from cirrus_airflow.storage import Storage, StorageError


def _rows(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 8, n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return SparseRows(
        labels=rng.integers(0, 2, n).astype(np.float32),
        indptr=indptr,
        indices=rng.integers(0, 1 << 20, indptr[-1]).astype(np.int32),
        values=rng.random(indptr[-1]).astype(np.float32),
    )


def _same(a: SparseRows, b: SparseRows) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("labels", "indptr", "indices", "values"))


def test_shard_round_trip_by_row_group(tmp_path):
    rows = _rows()
    uri = str(tmp_path / "part-00000.parquet")
    entry = write_shard(Storage(), uri, rows, row_group_rows=300)
    assert entry == {"rows": 1000, "row_groups": 4, "bytes": Path(uri).stat().st_size}
    with ShardReader(Storage(), uri) as reader:
        assert reader.num_row_groups == 4
        assert _same(SparseRows.concat(list(reader)), rows)
        assert _same(reader.row_group(1), rows.slice(300, 600))
        assert _same(reader.read_all(), rows)


def test_s3_shards_are_read_by_row_group_with_ranged_gets():
    import boto3
    from moto import mock_aws

    rows = _rows(40_000)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="shards")
        storage = Storage(s3_client_factory=lambda: client)
        write_shard(storage, "s3://shards/part.parquet", rows, row_group_rows=4000)
        size = storage.size("s3://shards/part.parquet")
        fetched = []
        original = storage.read_bytes
        storage.read_bytes = lambda uri, start=None, end=None: fetched.append((start, end)) or original(uri, start, end)
        with ShardReader(storage, "s3://shards/part.parquet") as reader:
            assert _same(reader.row_group(2), rows.slice(8000, 12_000))
        assert fetched and all(start is not None for start, _ in fetched)
        assert sum(end - start for start, end in fetched) < 0.3 * size  # the footer and one row group


def test_a_corrupt_shard_is_named(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StorageError, match="bad.parquet: not a readable Parquet shard"):
        ShardReader(Storage(), str(tmp_path / "bad.parquet"))


def test_take_slice_and_concat_agree():
    rows = _rows(50)
    picked = rows.take(np.array([3, 0, 49, 3]))
    assert picked.labels.tolist() == rows.labels[[3, 0, 49, 3]].tolist()
    assert picked.indices.tolist() == (
        rows.slice(3, 4).indices.tolist() + rows.slice(0, 1).indices.tolist()
        + rows.slice(49, 50).indices.tolist() + rows.slice(3, 4).indices.tolist()
    )
    assert _same(SparseRows.concat([rows.slice(0, 20), rows.slice(20, 50)]), rows)


def test_schema_is_the_contract(tmp_path):
    table = _rows(3).to_arrow()
    assert [str(t) for t in table.schema.types] == ["float", "list<item: int32>", "list<item: float>"]
    with pytest.raises(ValueError, match="not a sparse shard"):
        SparseRows.from_arrow(table.drop_columns(["values"]))


def test_manifest_round_trip_and_missing_manifest_message(tmp_path):
    manifest = Manifest(kind="sparse", feature_dim=42, shards={"train": [{"path": "shards/part-00000.parquet",
                        "rows": 3, "row_groups": 1}], "test": []}, transform={"a": 1}, split={"b": 2},
                        counts={"rows_read": 3})
    write_manifest(Storage(), str(tmp_path), manifest)
    back = read_manifest(Storage(), str(tmp_path))
    assert back.to_json() == manifest.to_json()
    assert back.shard_uris(str(tmp_path), "train") == [str(tmp_path / "shards" / "part-00000.parquet")]
    with pytest.raises(StorageError, match="preprocessing has not finished there"):
        read_manifest(Storage(), str(tmp_path / "elsewhere"))


def test_reading_a_shard_leaves_pandas_unimported(tmp_path):
    """pyarrow's to_numpy imports pandas, some 0.3 s that a worker would pay before its first step."""
    uri = str(tmp_path / "part-00000.parquet")
    write_shard(Storage(), uri, _rows(), row_group_rows=300)
    ratings_uri = str(tmp_path / "part-00001.parquet")
    write_shard(Storage(), ratings_uri, RatingRows(np.arange(5, dtype=np.int32), np.arange(5, dtype=np.int32),
                                                  np.ones(5, dtype=np.float32)).to_arrow(), row_group_rows=2)
    script = (f"import sys\nfrom cirrus_airflow.shards import ShardReader\nfrom cirrus_airflow.storage import Storage\n"
              f"for uri in {[uri, ratings_uri]!r}:\n    ShardReader(Storage(), uri).row_group(1)\n"
              "print('pandas' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_shard_column_with_nulls_is_refused():
    with pytest.raises(ValueError, match="nulls"):
        SparseRows.from_arrow(pa.table({"label": pa.array([1.0, None], pa.float32()),
                                        "indices": pa.array([[1], [2]], pa.list_(pa.int32())),
                                        "values": pa.array([[1.0], [1.0]], pa.list_(pa.float32()))}))
