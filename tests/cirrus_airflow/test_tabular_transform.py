"""The tabular transform on hand-made rows: scaling, missing values, signed hashing,
crosses and the minimum-count filter, each against what numpy says it should be."""

import numpy as np
import pytest

from cirrus_airflow import hashing
from cirrus_airflow.numeric import ColumnStats
from cirrus_airflow.storage import Storage
from cirrus_airflow.transforms.tabular import TabularRows, TabularTransform
from cirrus_airflow.transforms.workspace import Workspace

NUMERIC = ("a", "b")
CATEGORICAL = ("x", "y", "z")


def _rows(numeric, categorical, labels=None):
    numeric = np.asarray(numeric, dtype=np.float64)
    categorical = np.asarray(categorical, dtype=np.uint64)
    n = len(numeric)
    labels = np.zeros(n, np.float32) if labels is None else np.asarray(labels, np.float32)
    return TabularRows(labels, numeric, categorical, np.arange(1, n + 1), np.arange(n, dtype=np.uint64))


def _fitted(rows, tmp_path, **params):
    transform = TabularTransform(NUMERIC, CATEGORICAL, hash_bits=10, log_transform=False, **params)
    workspace = Workspace(Storage(), str(tmp_path))
    summary = transform.summarize(rows, np.ones(len(rows), bool), workspace, "00000-0000")
    return transform.fit([summary], workspace)


def _dense(sparse, dim):
    out = np.zeros((len(sparse), dim), np.float32)
    rows = np.repeat(np.arange(len(sparse)), np.diff(sparse.indptr))
    out[rows, sparse.indices] = sparse.values
    return out


def test_standard_scaling_and_mean_imputation_match_numpy(tmp_path):
    numeric = [[1.0, 10.0], [2.0, np.nan], [4.0, 30.0], [np.nan, 20.0]]
    rows = _rows(numeric, np.arange(12).reshape(4, 3))
    transform = _fitted(rows, tmp_path, normalize="standard", missing="impute")
    assert transform.numeric_width == 2  # no indicator columns when imputing
    dense = _dense(transform.apply(rows), transform.feature_dim)[:, :2]
    x = np.array(numeric)
    mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    expected = np.where(np.isnan(x), 0.0, (x - mean) / std)  # the mean imputed, then scaled: 0
    np.testing.assert_allclose(dense, expected, rtol=1e-6, atol=1e-6)


def test_missing_values_as_indicator_features(tmp_path):
    rows = _rows([[1.0, np.nan], [3.0, 5.0]], [[1, 2, 3], [4, 5, 6]])
    transform = _fitted(rows, tmp_path, normalize="minmax")
    sparse = transform.apply(rows)
    first = sparse.indices[sparse.indptr[0]:sparse.indptr[1]].tolist()
    assert first[:2] == [0, 3]  # a present, b missing: its indicator (2 + 1) instead
    assert sparse.values[1] == 1.0
    assert transform.to_json()["layout"]["missing_indicators"] == [2, 4]


def test_signed_hashing_gives_each_value_a_fixed_sign(tmp_path):
    rng = np.random.default_rng(0)
    cats = rng.integers(0, np.iinfo(np.uint64).max, size=(2000, 3), dtype=np.uint64, endpoint=True)
    rows = _rows(np.zeros((2000, 2)), cats)
    plain = _fitted(rows, tmp_path / "p")
    signed = _fitted(rows, tmp_path / "s", signed_hash=True)
    a, b = plain.apply(rows), signed.apply(rows)
    assert np.array_equal(a.indices, b.indices)
    hashed = b.indices >= signed.numeric_width
    signs = b.values[hashed]
    assert set(np.unique(signs)) == {-1.0, 1.0} and 0.45 < (signs > 0).mean() < 0.55
    expected = np.where(cats.ravel() >> np.uint64(63), 1.0, -1.0)
    assert np.array_equal(signs, expected)


def test_a_cross_is_one_more_hashed_feature_that_depends_on_both_values(tmp_path):
    cats = np.array([[1, 2, 3], [1, 2, 4], [1, 9, 3], [7, 2, 3]], dtype=np.uint64)
    rows = _rows(np.zeros((4, 2)), cats)
    transform = _fitted(rows, tmp_path, crosses=(("x", "y"),))
    sparse = transform.apply(rows)
    assert np.diff(sparse.indptr).tolist() == [2 + 3 + 1] * 4
    crossed = sparse.indices[sparse.indptr[1:] - 1]
    assert crossed[0] == crossed[1]  # same (x, y), different z
    assert crossed[0] != crossed[2] and crossed[0] != crossed[3]


def test_min_count_folds_rare_buckets_into_a_rare_bucket_per_column(tmp_path):
    common = hashing.derive_seed(1, 1)
    cats = np.array([[common, common + 1, i] for i in range(100, 110)], dtype=np.uint64)
    rows = _rows(np.zeros((10, 2)), cats)
    transform = _fitted(rows, tmp_path, min_count=3)
    assert (tmp_path / "transform" / "frequent-buckets.npy").exists()
    dense_index = transform.apply(rows).indices.reshape(10, -1)[:, -3:]
    mask = np.uint64((1 << 10) - 1)
    assert (dense_index[:, 0] == 4 + int(cats[0, 0] & mask)).all()  # seen 10 times: kept
    assert len(set(dense_index[:, 2].tolist())) == 1  # ten values seen once: one rare bucket
    rare = transform._rare_buckets()[2] + 4
    assert dense_index[0, 2] == rare
    # A fresh copy from the manifest's JSON loads the mask and transforms alike.
    again = TabularTransform.from_json(transform.to_json()).load(Workspace(Storage(), str(tmp_path)))
    assert np.array_equal(again.apply(rows).indices, transform.apply(rows).indices)


def test_the_numeric_statistics_merge_exactly():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 4))
    x[rng.random(x.shape) < 0.1] = np.nan
    parts = [ColumnStats.of(x[i:i + 250]) for i in range(0, 1000, 250)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    np.testing.assert_allclose(merged.mean, np.nanmean(x, axis=0))
    np.testing.assert_allclose(merged.std, np.nanstd(x, axis=0))
    np.testing.assert_array_equal(merged.minimum, np.nanmin(x, axis=0))
    np.testing.assert_array_equal(merged.missing, np.isnan(x).sum(axis=0))


@pytest.mark.parametrize("params, message", [
    ({"crosses": (("x", "w"),)}, "'w' is not a categorical column"),
    ({"crosses": (("x", "x"),)}, "two different categorical columns"),
    ({"min_count": 0}, "min_count must be at least 1"),
    ({"missing": "zero"}, "missing must be one of"),
    ({"hash_bits": 30}, "hash_bits must be between 1 and 26"),
])
def test_bad_parameters_say_what_to_do(params, message):
    with pytest.raises(ValueError, match=message):
        TabularTransform(NUMERIC, CATEGORICAL, **params)
