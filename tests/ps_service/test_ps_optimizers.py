"""Server-side arithmetic: optimizers against a numpy reference, tables, validation."""

from __future__ import annotations

import numpy as np
import pytest

from ps_service.errors import PSError
from ps_service.optimizers import resolve_options
from ps_service.store import TableStore
from ps_service.tables import Table, TableSpec, sum_duplicates

SIZE = 50


def make_table(**request) -> Table:
    return Table(TableSpec.from_request({"name": "t", "size": SIZE, **request}), max_reports=5)


def reference_steps(optimizer: str, width: int, steps, *, lr, l2, initial=0.1, eps=1e-8) -> np.ndarray:
    """Dense float64 reference: sum duplicate rows with np.add.at, update only touched rows."""
    weights = np.zeros((SIZE, width))
    accumulator = np.full((SIZE, width), initial)
    for keys, grads in steps:
        dense = np.zeros((SIZE, width))
        np.add.at(dense, keys, grads.astype(np.float64))
        touched = np.unique(keys)
        g = dense[touched] + l2 * weights[touched]
        if optimizer == "sgd":
            weights[touched] -= lr * g
        else:
            accumulator[touched] += g * g
            weights[touched] -= lr * g / (np.sqrt(accumulator[touched]) + eps)
    return weights


def random_steps(width: int, count: int = 6):
    rng = np.random.default_rng(width)
    steps = []
    for _ in range(count):
        keys = rng.integers(0, SIZE, 40)
        keys[:5] = keys[5]  # always some duplicates
        steps.append((keys, rng.standard_normal((40, width)).astype(np.float32)))
    return steps


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_optimizer_matches_numpy_reference_with_duplicate_keys(optimizer, width, l2):
    table = make_table(width=width, optimizer=optimizer, learning_rate=0.3, l2=l2)
    steps = random_steps(width)
    for keys, grads in steps:
        table.push(keys, grads)
    expected = reference_steps(optimizer, width, steps, lr=0.3, l2=l2)
    np.testing.assert_allclose(table.get(), expected, rtol=1e-5, atol=1e-6)
    assert table.updates == len(steps)


def test_adagrad_options_change_the_step():
    table = make_table(optimizer="adagrad", learning_rate=1.0, initial_accumulator=3.0, eps=1.0)
    table.push(np.array([4]), np.array([[1.0]], dtype=np.float32))
    # accumulator 3 + 1 = 4, step 1 * 1 / (sqrt(4) + 1)
    assert table.pull(np.array([4]))[0, 0] == pytest.approx(-1 / 3)


def test_sum_duplicates_adds_repeated_rows_and_keeps_unique_ones():
    keys = np.array([7, 3, 7, 1, 3, 7], dtype=np.int32)
    grads = np.arange(12, dtype=np.float32).reshape(6, 2)
    rows, summed = sum_duplicates(keys, grads)
    assert rows.tolist() == [1, 3, 7]
    np.testing.assert_array_equal(summed, [[6, 7], [10, 12], [14, 17]])
    unique_rows, same = sum_duplicates(np.array([5, 2]), grads[:2])
    assert unique_rows.tolist() == [5, 2]
    np.testing.assert_array_equal(same, grads[:2])


def test_zero_initialiser_gives_zeros():
    assert not make_table(width=2).get().any()


def test_seeded_normal_initialiser_is_reproducible_and_scaled():
    first = make_table(width=4, initializer="normal", init_scale=0.5, seed=11).get()
    again = make_table(width=4, initializer="normal", init_scale=0.5, seed=11).get()
    other = make_table(width=4, initializer="normal", init_scale=0.5, seed=12).get()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert first.dtype == np.float32 and first.shape == (SIZE, 4)
    assert 0.3 < first.std() < 0.7


def test_out_of_range_key_names_table_key_and_size_and_changes_nothing():
    table = make_table(initializer="normal", seed=1)
    before = table.get()
    with pytest.raises(PSError, match=r"table 't' has 50 keys.*key 50 is out of range"):
        table.push(np.array([1, 50]), np.ones((2, 1), dtype=np.float32))
    with pytest.raises(PSError, match="key -1 is out of range"):
        table.pull(np.array([-1]))
    with pytest.raises(PSError, match="key 99 is out of range"):
        table.push_pull(np.array([1]), np.ones((1, 1), dtype=np.float32), np.array([99]))
    np.testing.assert_array_equal(table.get(), before)
    assert table.updates == 0


def test_wrong_gradient_width_is_refused():
    table = make_table(width=3)
    with pytest.raises(PSError, match="width 3.*shape \\(2, 1\\)"):
        table.push(np.array([1, 2]), np.ones((2, 1), dtype=np.float32))


def test_non_finite_gradient_is_refused_naming_the_key():
    table = make_table()
    grads = np.array([[1.0], [np.nan]], dtype=np.float32)
    with pytest.raises(PSError, match="NaN or infinite value for key 8"):
        table.push(np.array([3, 8]), grads)
    assert not table.get().any()


def test_set_replaces_weights_and_checks_shape():
    table = make_table(width=2)
    values = np.arange(SIZE * 2, dtype=np.float32).reshape(SIZE, 2)
    table.set(values)
    np.testing.assert_array_equal(table.pull(np.array([3])), values[[3]])
    with pytest.raises(PSError, match="shape"):
        table.set(values[:, :1])


@pytest.mark.parametrize(
    ("optimizer", "options", "message"),
    [
        ("sgd", {"momentum": 0.9}, "has no option 'momentum'"),
        ("rmsprop", {}, "unknown optimizer 'rmsprop'"),
        ("sgd", {"learning_rate": 0}, "learning_rate must be > 0"),
        ("adagrad", {"eps": -1.0}, "eps must be finite and >= 0"),
        ("sgd", {"l2": "a lot"}, "l2 must be a number"),
    ],
)
def test_bad_optimizer_options_are_refused(optimizer, options, message):
    with pytest.raises(PSError, match=message):
        resolve_options(optimizer, options)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"name": "", "size": 3}, "table name"),
        ({"name": "t", "size": 0}, "size must be an integer >= 1"),
        ({"name": "t", "size": 3, "width": 1.5}, "width must be an integer"),
        ({"name": "t", "size": 3, "initializer": "ones"}, "initializer must be one of"),
    ],
)
def test_bad_table_specs_are_refused(request_, message):
    with pytest.raises(PSError, match=message):
        TableSpec.from_request(request_)


def test_store_create_is_idempotent_and_refuses_conflicts():
    store = TableStore()
    table, created = store.create({"name": "w", "size": 10, "learning_rate": 0.1})
    same, created_again = store.create({"name": "w", "size": 10, "optimizer": "sgd", "learning_rate": 0.1})
    assert created and not created_again and same is table
    with pytest.raises(PSError, match="different spec.*size 10 != 20"):
        store.create({"name": "w", "size": 20})


def test_reports_are_bounded_and_validated():
    table = make_table()
    for step in range(8):
        table.report(worker=step % 2, name="train_loss", value=1.0 / (step + 1), count=10)
    assert len(table.reports) == 5
    assert table.reports[-1]["value"] == pytest.approx(1 / 8)
    with pytest.raises(PSError, match="value must be a finite number"):
        table.report(worker=None, name="train_loss", value=float("nan"), count=1)
    with pytest.raises(PSError, match="count must be an integer >= 1"):
        table.report(worker=None, name="train_loss", value=1.0, count=0)
