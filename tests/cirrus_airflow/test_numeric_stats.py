import numpy as np
import pytest

from cirrus_airflow.numeric import ColumnStats, log_counts, normalize


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.lognormal(2, 1.5, (5000, 6))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 5] = np.nan  # a column with no values at all
    return x


def test_merged_statistics_equal_numpy_on_the_whole_data():
    x = _data()
    parts = np.array_split(x, [10, 11, 2000, 4999])  # uneven, one of a single row
    merged = ColumnStats.of(parts[0])
    for p in parts[1:]:
        merged = merged.merge(ColumnStats.of(p))
    whole = x[:, :5]
    np.testing.assert_array_equal(merged.count[:5], (~np.isnan(whole)).sum(axis=0))
    np.testing.assert_allclose(merged.minimum[:5], np.nanmin(whole, axis=0))
    np.testing.assert_allclose(merged.maximum[:5], np.nanmax(whole, axis=0))
    np.testing.assert_allclose(merged.mean[:5], np.nanmean(whole, axis=0))
    np.testing.assert_allclose(merged.std[:5], np.nanstd(whole, axis=0), rtol=1e-9)
    assert merged.count[5] == 0 and np.isnan(merged.minimum[5])


def test_json_round_trip_keeps_empty_columns():
    stats = ColumnStats.of(_data())
    back = ColumnStats.from_json(stats.to_json())
    for name in ("count", "missing", "minimum", "maximum", "total", "total_sq"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name))


@pytest.mark.parametrize("method", ["minmax", "standard"])
def test_normalize(method):
    x = _data()
    stats = ColumnStats.of(x)
    scaled = normalize(x, stats, method)
    assert np.array_equal(np.isnan(scaled), np.isnan(x))
    col = scaled[:, 0][~np.isnan(scaled[:, 0])]
    if method == "minmax":
        assert col.min() == pytest.approx(0) and col.max() == pytest.approx(1)
    else:
        assert col.mean() == pytest.approx(0, abs=1e-9) and col.std() == pytest.approx(1)
    with pytest.raises(ValueError, match="normalize must be one of"):
        normalize(x, stats, "zscore")


def test_constant_column_scales_to_zero_and_log_counts_keeps_sign():
    x = np.array([[3.0], [3.0], [np.nan]])
    out = normalize(x, ColumnStats.of(x), "minmax")
    assert out[0, 0] == 0 and np.isnan(out[2, 0])
    np.testing.assert_allclose(log_counts(np.array([-3.0, 0.0, 3.0])), [-np.log(4), 0, np.log(4)])
