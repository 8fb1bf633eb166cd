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


def reference_rate(t: int, *, lr, schedule="constant", decay_steps=1000, decay_rate=0.5) -> float:
    if schedule == "constant":
        return lr
    if schedule == "inverse_sqrt":
        return lr / np.sqrt(1 + (t - 1) / decay_steps)
    return lr * decay_rate ** ((t - 1) // decay_steps)


def reference_steps(optimizer: str, width: int, steps, *, lr, l2, schedule="constant", decay_steps=1000,
                    decay_rate=0.5, initial_accumulator=0.1, eps=1e-8, momentum=0.9, beta1=0.9,
                    beta2=0.999) -> np.ndarray:
    """Dense float64 reference: sum duplicate rows with np.add.at, update only touched rows,
    with the learning rate and Adam's bias correction taken at the push's global step."""
    weights = np.zeros((SIZE, width))
    accumulator = np.full((SIZE, width), initial_accumulator)
    velocity, first, second = np.zeros((3, SIZE, width))
    for t, (keys, grads) in enumerate(steps, start=1):
        dense = np.zeros((SIZE, width))
        np.add.at(dense, keys, grads.astype(np.float64))
        r = np.unique(keys)
        g = dense[r] + l2 * weights[r]
        lr_t = reference_rate(t, lr=lr, schedule=schedule, decay_steps=decay_steps, decay_rate=decay_rate)
        if optimizer == "sgd":
            weights[r] -= lr_t * g
        elif optimizer == "adagrad":
            accumulator[r] += g * g
            weights[r] -= lr_t * g / (np.sqrt(accumulator[r]) + eps)
        elif optimizer == "momentum":
            velocity[r] = momentum * velocity[r] + g
            weights[r] -= lr_t * velocity[r]
        elif optimizer == "nesterov":
            velocity[r] = momentum * velocity[r] + g
            weights[r] -= lr_t * (g + momentum * velocity[r])
        else:
            first[r] = beta1 * first[r] + (1 - beta1) * g
            second[r] = beta2 * second[r] + (1 - beta2) * g * g
            m_hat, v_hat = first[r] / (1 - beta1**t), second[r] / (1 - beta2**t)
            weights[r] -= lr_t * m_hat / (np.sqrt(v_hat) + eps)
    return weights


def random_steps(width: int, count: int = 6, *, keys_per_step: int = 40, key_range: int = SIZE):
    rng = np.random.default_rng(width)
    steps = []
    for _ in range(count):
        keys = rng.integers(0, key_range, keys_per_step)
        keys[:5] = keys[5]  # always some duplicates
        steps.append((keys, rng.standard_normal((keys_per_step, width)).astype(np.float32)))
    return steps


OPTIMIZER_CASES = [
    ("sgd", {}),
    ("adagrad", {}),
    ("adagrad", {"initial_accumulator": 0.5, "eps": 1e-3}),
    ("momentum", {}),
    ("momentum", {"momentum": 0.5}),
    ("nesterov", {}),
    ("nesterov", {"momentum": 0.3}),
    ("adam", {}),
    ("adam", {"beta1": 0.7, "beta2": 0.95, "eps": 1e-4}),
]
SCHEDULE_CASES = [
    {"schedule": "constant"},
    {"schedule": "inverse_sqrt", "decay_steps": 3},
    {"schedule": "step", "decay_steps": 3, "decay_rate": 0.5},
]


@pytest.mark.parametrize("width", [1, 3])
@pytest.mark.parametrize(("optimizer", "options"), OPTIMIZER_CASES)
@pytest.mark.parametrize("schedule", SCHEDULE_CASES, ids=lambda case: case["schedule"])
@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_optimizer_matches_numpy_reference_with_duplicate_keys(optimizer, options, schedule, width, l2):
    # 10 pushes of 12 keys drawn from 20 rows: rows are touched repeatedly but not every
    # step (so laziness matters) and rows 20.. are never touched.
    table = make_table(width=width, optimizer=optimizer, learning_rate=0.3, l2=l2, **options, **schedule)
    steps = random_steps(width, count=10, keys_per_step=12, key_range=20)
    for keys, grads in steps:
        table.push(keys, grads)
    expected = reference_steps(optimizer, width, steps, lr=0.3, l2=l2, **options, **schedule)
    np.testing.assert_allclose(table.get(), expected, rtol=1e-5, atol=1e-6)
    assert not table.get()[20:].any()
    assert table.updates == len(steps)


def test_adagrad_options_change_the_step():
    table = make_table(optimizer="adagrad", learning_rate=1.0, initial_accumulator=3.0, eps=1.0)
    table.push(np.array([4]), np.array([[1.0]], dtype=np.float32))
    # accumulator 3 + 1 = 4, step 1 * 1 / (sqrt(4) + 1)
    assert table.pull(np.array([4]))[0, 0] == pytest.approx(-1 / 3)


def test_adam_first_step_moves_every_touched_coordinate_by_lr_times_sign():
    table = make_table(width=3, optimizer="adam", learning_rate=0.01)
    grads = np.array([[1e-3, -2.0, 5e2], [-7.0, 3e-2, -1e-1]], dtype=np.float32)
    table.push(np.array([2, 9]), grads)
    # m_hat = g and v_hat = g^2 at t = 1, so the step is lr * g / (|g| + eps)
    np.testing.assert_allclose(table.pull(np.array([2, 9])), -0.01 * np.sign(grads), rtol=1e-5)
    assert not np.delete(table.get(), [2, 9], axis=0).any()


def test_adam_bias_correction_uses_the_tables_global_step():
    """A row first pushed at step 5 is corrected by 1 - beta^5, not as if it were its step 1."""
    table = make_table(optimizer="adam", learning_rate=0.01)
    one = np.ones((1, 1), dtype=np.float32)
    for _ in range(4):
        table.push(np.array([0]), one)
    table.push(np.array([7]), 2 * one)
    b1, b2, g = 0.9, 0.999, 2.0
    m_hat = (1 - b1) * g / (1 - b1**5)
    v_hat = (1 - b2) * g * g / (1 - b2**5)
    expected = -0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
    assert table.pull(np.array([7]))[0, 0] == pytest.approx(expected, rel=1e-5)
    assert abs(expected) < 0.006  # visibly not the 0.01 * sign(g) a per-row step count would give


@pytest.mark.parametrize("mu", [0.9, 0.5])
def test_momentum_with_constant_gradient_follows_the_geometric_sum(mu):
    table = make_table(optimizer="momentum", learning_rate=0.1, momentum=mu)
    g, n = 2.0, 7
    for _ in range(n):
        table.push(np.array([3]), np.full((1, 1), g, dtype=np.float32))
    # after step k the velocity is g * (1 + mu + ... + mu^(k-1)) = g * (1 - mu^k) / (1 - mu)
    moved = sum((1 - mu**k) / (1 - mu) for k in range(1, n + 1))
    assert table.pull(np.array([3]))[0, 0] == pytest.approx(-0.1 * g * moved, rel=1e-5)


def test_nesterov_with_constant_gradient_adds_the_look_ahead_term():
    mu, g, n = 0.9, 2.0, 5
    table = make_table(optimizer="nesterov", learning_rate=0.1, momentum=mu)
    for _ in range(n):
        table.push(np.array([3]), np.full((1, 1), g, dtype=np.float32))
    moved = sum(1 + mu * (1 - mu**k) / (1 - mu) for k in range(1, n + 1))
    assert table.pull(np.array([3]))[0, 0] == pytest.approx(-0.1 * g * moved, rel=1e-5)


def test_untouched_rows_keep_their_momentum_until_pushed_again():
    table = make_table(optimizer="momentum", learning_rate=1.0, momentum=0.5)
    one = np.ones((1, 1), dtype=np.float32)
    table.push(np.array([1]), one)
    for _ in range(3):
        table.push(np.array([2]), one)
    assert table.state()[1]["velocity"][1, 0] == 1.0  # not decayed by pushes to row 2
    table.push(np.array([1]), one)
    assert table.pull(np.array([1]))[0, 0] == pytest.approx(-(1.0 + 1.5))


def sgd_rates(pushes: int, **schedule) -> np.ndarray:
    """The rate of each push, read off SGD moving a fresh zero row by lr_t * 1."""
    table = make_table(learning_rate=0.3, **schedule)
    for key in range(pushes):
        table.push(np.array([key]), np.ones((1, 1), dtype=np.float32))
    return -table.get()[:pushes, 0]


def test_step_schedule_halves_exactly_at_decay_steps_boundaries():
    rates = sgd_rates(12, schedule="step", decay_steps=4, decay_rate=0.5)
    first = np.float32(0.3)
    np.testing.assert_array_equal(rates, [first] * 4 + [first / 2] * 4 + [first / 4] * 4)


def test_inverse_sqrt_schedule_is_half_the_rate_after_three_decay_periods():
    rates = sgd_rates(13, schedule="inverse_sqrt", decay_steps=4)
    assert rates[0] == np.float32(0.3)
    assert rates[12] == pytest.approx(0.15, rel=1e-6)  # t = 1 + 3 * decay_steps
    assert (np.diff(rates) < 0).all()


def test_constant_schedule_is_the_default_and_never_decays():
    rates = sgd_rates(5)
    np.testing.assert_array_equal(rates, np.full(5, np.float32(0.3)))


def test_schedule_follows_the_step_argument_not_calls_made():
    optimizer = make_table(optimizer="sgd", schedule="step", decay_steps=10).optimizer
    assert optimizer.learning_rate(1) == np.float32(0.1)
    assert optimizer.learning_rate(21) == np.float32(0.025)
    assert optimizer.learning_rate(1) == np.float32(0.1)


def test_optimizer_refuses_a_step_before_the_first():
    optimizer = make_table().optimizer
    with pytest.raises(ValueError, match="from 1"):
        optimizer.apply(np.zeros((SIZE, 1), np.float32), np.array([0]), np.ones((1, 1), np.float32), 0)


@pytest.mark.parametrize(("optimizer", "options"), OPTIMIZER_CASES)
def test_checkpoint_of_weights_slots_and_updates_restores_the_optimizer_exactly(optimizer, options):
    request = {"width": 2, "optimizer": optimizer, "l2": 0.01, "schedule": "step", "decay_steps": 2,
               **options}
    steps = random_steps(2, count=8, keys_per_step=12, key_range=20)
    original = make_table(**request)
    for keys, grads in steps[:4]:
        original.push(keys, grads)
    saved = original.get(), {name: slot.copy() for name, slot in original.optimizer.slots.items()}
    restored = make_table(**request)
    restored.set(saved[0])
    restored.optimizer.load_slots(saved[1])
    restored.updates = original.updates
    for keys, grads in steps[4:]:
        original.push(keys, grads)
        restored.push(keys, grads)
    np.testing.assert_array_equal(restored.get(), original.get())
    for name, slot in original.optimizer.slots.items():
        np.testing.assert_array_equal(restored.optimizer.slots[name], slot)
        assert restored.optimizer.slots[name].dtype == np.float32


def test_optimizers_declare_their_state_slots():
    slots = {name: sorted(make_table(optimizer=name).optimizer.slots)
             for name in ("sgd", "adagrad", "momentum", "nesterov", "adam")}
    assert slots == {"sgd": [], "adagrad": ["accumulator"], "momentum": ["velocity"],
                     "nesterov": ["velocity"], "adam": ["first_moment", "second_moment"]}


def test_load_slots_refuses_other_names_and_shapes():
    optimizer = make_table(width=2, optimizer="adam").optimizer
    with pytest.raises(PSError, match="has slots.*checkpoint has \\['velocity'\\]"):
        optimizer.load_slots({"velocity": np.zeros((SIZE, 2))})
    wrong = {"first_moment": np.zeros((SIZE, 2)), "second_moment": np.zeros((SIZE, 3))}
    with pytest.raises(PSError, match="'second_moment' has shape \\(50, 2\\).*\\(50, 3\\)"):
        optimizer.load_slots(wrong)
    assert not optimizer.slots["first_moment"].any()


def test_push_with_no_keys_still_counts_a_step():
    table = make_table(schedule="step", decay_steps=1)
    table.push(np.array([], dtype=np.int64), np.zeros((0, 1), dtype=np.float32))
    table.push(np.array([5]), np.ones((1, 1), dtype=np.float32))
    assert table.pull(np.array([5]))[0, 0] == -np.float32(0.05)  # step 2's rate, 0.1 * 0.5
    assert table.updates == 2


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3e30])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_gradient_that_would_poison_the_row_is_refused_naming_the_key(bad, optimizer):
    table = make_table(optimizer=optimizer)
    grads = np.array([[1.0], [bad]], dtype=np.float32)
    with pytest.raises(PSError, match=r"NaN, infinite or larger than 1e\+18 value for key 8"):
        table.push(np.array([3, 8]), grads)
    assert not table.get().any() and table.updates == 0
    table.push(np.array([3, 8]), np.array([[1.0], [1e17]], dtype=np.float32))  # large but squarable
    assert np.isfinite(table.get()).all()


def test_set_replaces_weights_and_checks_shape():
    table = make_table(width=2)
    values = np.arange(SIZE * 2, dtype=np.float32).reshape(SIZE, 2)
    table.set(values)
    np.testing.assert_array_equal(table.pull(np.array([3])), values[[3]])
    with pytest.raises(PSError, match="shape"):
        table.set(values[:, :1])


def test_resolve_options_fills_every_default_so_equal_specs_compare_equal():
    options = resolve_options("adam", {})
    assert options == {"learning_rate": 0.1, "l2": 0.0, "schedule": "constant", "decay_steps": 1000,
                       "decay_rate": 0.5, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert resolve_options("adam", {"beta1": 0.9, "schedule": "constant", "decay_steps": 1000.0}) == options
    assert type(resolve_options("sgd", {"decay_steps": 20.0})["decay_steps"]) is int
    assert resolve_options("momentum", {})["momentum"] == 0.9


@pytest.mark.parametrize(
    ("optimizer", "options", "message"),
    [
        ("sgd", {"momentum": 0.9}, r"has no option 'momentum' \(it belongs to momentum, nesterov\)"),
        ("adam", {"beta3": 0.9}, r"'adam' has no option 'beta3'; its options are: beta1, beta2"),
        ("rmsprop", {}, "unknown optimizer 'rmsprop'; choose one of: adagrad, adam, momentum"),
        ("sgd", {"learning_rate": 0}, "learning_rate must be a finite number > 0, got 0"),
        ("sgd", {"learning_rate": float("inf")}, "learning_rate must be a finite number > 0"),
        ("adagrad", {"eps": -1.0}, "eps must be a finite number >= 1e-30, got -1.0"),
        ("adam", {"eps": 0.0}, "eps must be a finite number >= 1e-30, got 0.0"),  # 0/0 on a zero gradient
        ("sgd", {"l2": "a lot"}, "l2 must be a finite number >= 0, got 'a lot'"),
        ("sgd", {"l2": float("nan")}, "l2 must be a finite number >= 0, got nan"),
        ("sgd", {"schedule": "cosine"},
         "schedule must be one of 'constant', 'inverse_sqrt', 'step', got 'cosine'"),
        ("sgd", {"schedule": 1}, "schedule must be one of .*, got 1"),
        ("adam", {"beta1": 1.0}, r"beta1 must be a number in \[0, 1\), got 1.0"),
        ("adam", {"beta2": 1}, r"beta2 must be a number in \[0, 1\), got 1"),
        ("adam", {"beta2": -0.1}, r"beta2 must be a number in \[0, 1\)"),
        ("momentum", {"momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
        ("nesterov", {"momentum": True}, r"momentum must be a number in \[0, 1\), got True"),
        ("sgd", {"decay_steps": 0}, "decay_steps must be an integer >= 1, got 0"),
        ("sgd", {"decay_steps": 2.5}, "decay_steps must be an integer >= 1, got 2.5"),
        ("sgd", {"decay_rate": 0}, r"decay_rate must be a number in \(0, 1\], got 0"),
        ("sgd", {"decay_rate": 1.5}, r"decay_rate must be a number in \(0, 1\]"),
    ],
)
def test_bad_optimizer_options_are_refused(optimizer, options, message):
    with pytest.raises(PSError, match=message):
        resolve_options(optimizer, options)


def test_bad_option_message_says_what_to_do():
    with pytest.raises(PSError) as refused:
        resolve_options("adam", {"beta1": 1.5})
    assert str(refused.value) == (
        "optimizer 'adam': beta1 must be a number in [0, 1), got 1.5; "
        "pass such a value, or leave beta1 out for the default 0.9"
    )


def test_edge_values_inside_the_ranges_are_accepted():
    options = resolve_options("adam", {"beta1": 0, "beta2": 0.0, "decay_rate": 1, "decay_steps": 1, "l2": 0})
    assert (options["beta1"], options["decay_rate"], options["decay_steps"]) == (0.0, 1.0, 1)


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
