import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from cirrus_airflow import hashing

VALUES = ["", "a", "abcdefgh", "abcdefghi", "05db9164", "héllo wörld " * 7, "x" * 16, "x" * 17, None]


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5])
def test_vectorised_hash_matches_the_reference_definition(seed):
    got = hashing.hash_strings(pa.array(VALUES), seed)
    want = [hashing.hash_bytes_reference((v or "").encode(), seed) for v in VALUES]
    assert [int(h) for h in got] == want


def test_slices_binary_and_large_types_hash_alike():
    arr = pa.array(VALUES)
    full = hashing.hash_strings(arr, 3)
    assert np.array_equal(hashing.hash_strings(arr.slice(2, 5), 3), full[2:7])
    assert np.array_equal(hashing.hash_strings(arr.cast(pa.binary()), 3), full)
    assert np.array_equal(hashing.hash_strings(arr.cast(pa.large_string()), 3), full)
    assert np.array_equal(hashing.hash_strings(pa.chunked_array([arr.slice(0, 4), arr.slice(4)]), 3), full)


def test_seed_changes_every_hash():
    arr = pa.array([f"v{i}" for i in range(1000)])
    assert not np.any(hashing.hash_strings(arr, 1) == hashing.hash_strings(arr, 2))


def test_hash_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import pyarrow as pa, json; from cirrus_airflow.hashing import hash_strings;"
        f"print(json.dumps([int(h) for h in hash_strings(pa.array({VALUES[:-1]!r}), 42)]))"
    )
    here = [int(h) for h in hashing.hash_strings(pa.array(VALUES[:-1]), 42)]
    for py_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": py_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here


def test_buckets_are_uniform():
    arr = pa.array([f"{i:08x}" for i in range(200_000)])
    buckets = hashing.hash_strings(arr, 7) & np.uint64(255)
    counts = np.bincount(buckets.astype(np.int64), minlength=256)
    expected = len(arr) / 256
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 400  # 255 degrees of freedom: p < 1e-6 beyond this


def test_unit_interval_is_uniform_and_seeded():
    h = np.arange(100_000, dtype=np.uint64)
    u = hashing.unit_interval(h, 1)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    assert not np.allclose(u, hashing.unit_interval(h, 2))


def test_non_string_input_is_refused():
    with pytest.raises(TypeError, match="string or binary"):
        hashing.hash_strings(pa.array([1, 2]), 0)


def test_row_hashes_tell_rows_apart_by_value_and_column():
    numbers = np.array([[1.0, 0.0, np.nan], [1.0, -0.0, np.float64("nan") * -1], [1.0, np.nan, 0.0],
                        [0.0, 1.0, np.nan]])
    hashed = np.array([[5, 6], [5, 6], [5, 6], [5, 6]], dtype=np.uint64)
    h = hashing.hash_rows(numbers, hashed).tolist()
    assert h[0] == h[1]  # -0.0 is 0.0 and every NaN is missing
    assert len({h[0], h[2], h[3]}) == 3  # a missing value is not a zero; columns are not interchangeable
    assert hashing.hash_rows(numbers[:1], hashed[:1, ::-1]).tolist() != h[:1]
    counts = np.random.default_rng(0).integers(0, 40, (50_000, 5))  # small counts: alike in their low bits
    many = hashing.hash_rows(counts.astype(float), np.zeros((50_000, 0), np.uint64))
    assert len(set(many.tolist())) == len({tuple(r) for r in counts.tolist()})
