"""LIBSVM and ratings inputs through the whole driver (map tasks in-process), on
generated data and, when ``../shared/data`` is there, on a9a and MovieLens."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cirrus_airflow.datasets import write_synthetic_libsvm, write_synthetic_ratings
from cirrus_airflow.preprocess import PreprocessConfig, run_preprocess
from cirrus_airflow.shards import read_manifest
from cirrus_airflow.storage import Storage

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _run(inputs, out, executor, fmt, **kw):
    params = {"split_bytes": 1 << 17, "workers": 3, "row_group_rows": 500, "shard_rows": 5000}
    config = PreprocessConfig(inputs=[str(i) for i in inputs], output=str(out), format=fmt, **{**params, **kw})
    return run_preprocess(config, storage=Storage(), executor=executor)


def _table(out, part):
    manifest = read_manifest(Storage(), str(out))
    return pa.concat_tables([pq.read_table(u) for u in manifest.shard_uris(str(out), part)])


def _rejected(out):
    return [json.loads(line) for f in sorted((Path(out) / "rejected").glob("*.jsonl"))
            for line in f.read_text().splitlines()]


# -- ratings -------------------------------------------------------------------------------------------------


def test_ratings_get_dense_ids_a_saved_mapping_and_the_mean(tmp_path, inline_executor):
    raw = tmp_path / "ratings.csv"
    write_synthetic_ratings(Storage(), str(raw), users=300, items=800, rows=12_000, seed=1)
    summary = _run([raw], tmp_path / "out", inline_executor, "ratings")
    assert summary["rows_written"] == 12_000 and summary["rows_rejected"] == 0
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    source = np.genfromtxt(raw, delimiter=",", skip_header=1)
    assert manifest.kind == "ratings"
    assert manifest.transform["num_users"] == len(np.unique(source[:, 0]))
    assert manifest.transform["num_items"] == len(np.unique(source[:, 1]))
    assert manifest.feature_dim == manifest.transform["num_users"] + manifest.transform["num_items"]
    train, test = _table(tmp_path / "out", "train"), _table(tmp_path / "out", "test")
    assert train.schema.types == [pa.int32(), pa.int32(), pa.float32()]
    assert manifest.transform["mean_rating"] == pytest.approx(train.column("rating").to_numpy().mean(), rel=1e-6)
    # The saved mappings turn the dense ids back into the raw ones: every source row is there once.
    users = pq.read_table(tmp_path / "out" / manifest.transform["user_ids"]).column("id").to_numpy(False)
    items = pq.read_table(tmp_path / "out" / manifest.transform["item_ids"]).column("id").to_numpy(False)
    both = pa.concat_tables([train, test])
    got = sorted(zip(users[both.column("user").to_numpy()].astype(float).tolist(),
                     items[both.column("item").to_numpy()].astype(float).tolist(),
                     np.round(both.column("rating").to_numpy().astype(float), 2).tolist()))
    assert got == sorted(map(tuple, source[:, :3].tolist()))
    assert [int(u) for u in users[:3]] == sorted(int(u) for u in users)[:3]  # numeric ids in numeric order


def test_bad_ratings_are_kept_aside_with_their_reason(tmp_path, inline_executor):
    raw = tmp_path / "ratings.tsv"
    good = [f"{u}\t{i}\t{(u + i) % 5 + 0.5}" for u in range(40) for i in range(30)]
    raw.write_text("\n".join(good[:500] + ["\t7\t3.0", "3\t4\tgreat", "1\t2"] + good[500:]) + "\n")
    summary = _run([raw], tmp_path / "out", inline_executor, "ratings")
    assert summary["rejected_by_reason"] == {"bad_number": 1, "missing_id": 1, "wrong_field_count": 1}
    assert sorted(r["line"] for r in _rejected(tmp_path / "out")) == [501, 502, 503]


@pytest.mark.skipif(not (DATA / "movielens-small" / "ratings.csv").exists(), reason="../shared/data is absent")
def test_movielens_small(tmp_path, inline_executor):
    summary = _run([DATA / "movielens-small" / "ratings.csv"], tmp_path / "out", inline_executor, "ratings",
                   shard_rows=40_000, row_group_rows=4096)
    assert summary["rows_written"] == 100_836 and summary["rows_rejected"] == 0
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert (manifest.transform["num_users"], manifest.transform["num_items"]) == (610, 9724)
    assert 3.4 < manifest.transform["mean_rating"] < 3.6
    assert 0.18 < summary["test_rows"] / 100_836 < 0.22


# -- LIBSVM --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zero_based, signed", [(False, True), (True, False)])
def test_libsvm_indices_are_rebased_and_labels_become_0_1(tmp_path, inline_executor, zero_based, signed):
    raw = tmp_path / "data.svm"
    write_synthetic_libsvm(Storage(), str(raw), rows=6000, features=150, zero_based=zero_based,
                           signed_labels=signed, seed=3)
    summary = _run([raw], tmp_path / "out", inline_executor, "libsvm")
    assert summary["rows_written"] == 6000 and summary["rows_rejected"] == 0
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert manifest.transform["index_base"] == (0 if zero_based else 1)
    assert manifest.feature_dim == 150
    train = _table(tmp_path / "out", "train")
    indices = np.concatenate(train.column("indices").to_numpy(False))
    assert indices.min() >= 0 and indices.max() == 149
    assert set(np.unique(train.column("label").to_numpy())) == {0.0, 1.0}
    assert set(np.unique(np.concatenate(train.column("values").to_numpy(False)))) == {1.0}  # 1/max|x| of 1s


def test_libsvm_num_features_rejects_rows_beyond_it_and_standard_scaling(tmp_path, inline_executor):
    raw = tmp_path / "data.svm"
    lines = [f"{'+1' if r % 3 else '-1'} {1 + r % 5}:{1 + r % 4} {6 + r % 4}:{(r % 7) / 2}" for r in range(3000)]
    lines[1234] = "+1 3:1 12:1"
    raw.write_text("\n".join(lines) + "\n")
    summary = _run([raw], tmp_path / "out", inline_executor, "libsvm", num_features=10, normalize="standard",
                   index_base="1", max_rejected_fraction=0.5)
    assert summary["rejected_by_reason"] == {"index_out_of_range": 1}
    (rejected,) = _rejected(tmp_path / "out")
    assert (rejected["line"], rejected["text"]) == (1235, "+1 3:1 12:1")
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    scale = np.load(tmp_path / "out" / manifest.transform["feature_scale"])
    train = _table(tmp_path / "out", "train")
    dense = np.zeros((train.num_rows, 10))
    offsets = train.column("indices").combine_chunks().offsets.to_numpy()
    rows = np.repeat(np.arange(train.num_rows), np.diff(offsets))
    dense[rows, np.concatenate(train.column("indices").to_numpy(False))] = np.concatenate(
        train.column("values").to_numpy(False))
    unscaled = dense / scale
    std = unscaled.std(axis=0)  # over all training rows, absent entries as zeros
    np.testing.assert_allclose(dense.std(axis=0)[std > 0], 1.0, rtol=1e-5)


@pytest.mark.skipif(not (DATA / "a9a").exists(), reason="../shared/data is absent")
def test_a9a_with_its_test_file(tmp_path, inline_executor):
    summary = _run([DATA / "a9a"], tmp_path / "out", inline_executor, "libsvm",
                   test_inputs=[str(DATA / "a9a.t")], shard_rows=20_000, split_bytes=1 << 20, num_features=123)
    assert (summary["train_rows"], summary["test_rows"]) == (32_560, 16_281)
    assert summary["rows_rejected"] == 0
    manifest = read_manifest(Storage(), str(tmp_path / "out"))
    assert manifest.feature_dim == 123 and manifest.transform["index_base"] == 1  # 123 is never used in a9a
    assert abs(manifest.label_stats["train_positive_rate"] - 0.24) < 0.01


# -- CSV and Parquet with a schema ---------------------------------------------------------------------------

SCHEMA = {"label": "clicked", "numeric": ["price", "views"], "categorical": ["country", "device"]}


def _clicks_table(n=6000, seed=0):
    rng = np.random.default_rng(seed)
    views = rng.integers(0, 100, n).astype(float)
    views[rng.random(n) < 0.1] = np.nan
    return pa.table({
        "clicked": rng.integers(0, 2, n), "price": rng.normal(10, 3, n),
        "views": pa.array(views, from_pandas=True), "country": rng.choice(["fr", "de", "us"], n),
        "device": rng.integers(0, 50, n), "ignored": rng.random(n),
    })


def test_csv_and_parquet_of_the_same_rows_give_the_same_shards(tmp_path, inline_executor):
    import pyarrow.csv as pacsv

    table = _clicks_table()
    pq.write_table(table, tmp_path / "clicks.parquet", row_group_size=1000)
    pacsv.write_csv(table, tmp_path / "clicks.csv")
    params = {"schema": SCHEMA, "hash_bits": 10, "split_bytes": 40_000, "crosses": [("country", "device")]}
    a = _run([tmp_path / "clicks.parquet"], tmp_path / "pq", inline_executor, "parquet", **params)
    b = _run([tmp_path / "clicks.csv"], tmp_path / "csv", inline_executor, "csv", **params)
    assert a["rows_written"] == b["rows_written"] == 6000
    assert read_manifest(Storage(), str(tmp_path / "pq")).source["splits"] > 1  # runs of row groups
    for part in ("train", "test"):
        assert _table(tmp_path / "pq", part).equals(_table(tmp_path / "csv", part))
    manifest = read_manifest(Storage(), str(tmp_path / "pq"))
    assert manifest.transform["numeric_columns"] == ["price", "views"]
    assert manifest.feature_dim == 4 + 1024
    assert manifest.transform["numeric_stats"]["missing"][1] > 0


def test_bad_csv_rows_have_their_line_numbers_and_quoted_fields_are_read(tmp_path, inline_executor):
    lines = ["clicked,price,views,country,device"] + [f"{i % 2},{i},{i % 7},\"c,{i % 3}\",d{i % 5}"
                                                      for i in range(400)]
    lines[10] = "2,1,1,fr,d1"
    lines[20] = "1,cheap,1,fr,d1"
    lines[30] = "1,2"
    (tmp_path / "in.csv").write_text("\n".join(lines) + "\n")
    summary = _run([tmp_path / "in.csv"], tmp_path / "out", inline_executor, "csv", schema=SCHEMA,
                   max_rejected_fraction=0.1)
    assert summary["rows_written"] == 397
    assert {(r["line"], r["reason"]) for r in _rejected(tmp_path / "out")} == {
        (11, "bad_label"), (21, "bad_number"), (31, "wrong_field_count")}


def test_a_schema_naming_a_missing_column_is_a_clear_error(tmp_path, inline_executor):
    pq.write_table(_clicks_table(100), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text("clicked,price\n1,2\n")
    from cirrus_airflow.preprocess import PreprocessError

    with pytest.raises(PreprocessError, match="no column 'views', 'country', 'device'; its columns are clicked, price"):
        _run([tmp_path / "a.csv"], tmp_path / "out", inline_executor, "csv", schema=SCHEMA)
    bad = {**SCHEMA, "numeric": ["price", "cost"]}
    with pytest.raises(PreprocessError, match="no column 'cost'"):
        _run([tmp_path / "a.parquet"], tmp_path / "out", inline_executor, "parquet", schema=bad)
    with pytest.raises(ValueError, match="needs a schema"):
        _run([tmp_path / "a.parquet"], tmp_path / "out", inline_executor, "parquet")
