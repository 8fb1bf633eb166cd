"""Search spaces: grid expansion and seeded random sampling, values typed as the training takes them."""

import math

import numpy as np
import pytest

from cirrus_airflow.training import TrainConfig
from cirrus_airflow.tuning.space import Distribution, grid, parse_assignment, random_search, searchable, typed


def test_a_grid_is_the_cartesian_product_in_a_fixed_order_with_typed_values():
    configs = grid({"learning_rate": ["0.01", "0.1"], "workers": ["2", "4"], "optimizer": ["adagrad"]})
    assert configs == [
        {"learning_rate": 0.01, "workers": 2, "optimizer": "adagrad"},
        {"learning_rate": 0.01, "workers": 4, "optimizer": "adagrad"},
        {"learning_rate": 0.1, "workers": 2, "optimizer": "adagrad"},
        {"learning_rate": 0.1, "workers": 4, "optimizer": "adagrad"},
    ]
    assert all(isinstance(c["workers"], int) and isinstance(c["learning_rate"], float) for c in configs)
    for config in configs:  # each one is a valid training configuration
        TrainConfig(data="d", output="o", **config).validate()


def test_worker_memory_and_every_training_setting_but_the_plumbing_are_searchable():
    names = searchable()
    assert {"workers", "worker_memory_mb", "learning_rate", "l2", "factors", "minibatch", "optimizer"} <= set(names)
    assert not {"data", "output", "ps_token"} & set(names)
    assert names["worker_memory_mb"] is int and names["l2"] is float and names["epochs"] is int


@pytest.mark.parametrize("call, message", [
    (lambda: grid({"output": ["x"]}), "'output' is not a parameter a search can vary"),
    (lambda: grid({"workers": ["two"]}), "workers takes int values, got 'two'"),
    (lambda: grid({"workers": ["2.5"]}), "workers takes int values"),
    (lambda: grid({"workers": []}), "must be a non-empty list"),
    (lambda: grid({}), "at least one parameter"),
    (lambda: Distribution.parse("l2", "gauss:0:1"), "distribution must be one of"),
    (lambda: Distribution.parse("l2", "loguniform:0:1"), "loguniform bounds must be positive"),
    (lambda: Distribution.parse("l2", "uniform:1:0"), "LO < HI"),
    (lambda: Distribution.parse("l2", "uniform:1"), "needs two bounds"),
    (lambda: random_search({"l2": "uniform:0:1"}, samples=0), "samples must be at least 1"),
    (lambda: parse_assignment("learning_rate"), "expected NAME=VALUES"),
])
def test_bad_spaces_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_random_samples_follow_their_distributions_and_the_seed():
    space = {"learning_rate": "loguniform:1e-4:1", "factors": "int:4:8", "optimizer": "choice:sgd,adam",
             "l2": "uniform:0:0.5"}
    a, b = random_search(space, samples=2000, seed=3), random_search(space, samples=2000, seed=3)
    assert a == b and a != random_search(space, samples=2000, seed=4)
    lr = np.log10([c["learning_rate"] for c in a])
    assert lr.min() >= -4 and lr.max() <= 0 and abs(np.mean(lr) + 2) < 0.1  # uniform in log space
    assert {c["factors"] for c in a} == {4, 5, 6, 7, 8} and all(isinstance(c["factors"], int) for c in a)
    assert {c["optimizer"] for c in a} == {"sgd", "adam"}
    assert all(0 <= c["l2"] <= 0.5 for c in a) and abs(np.mean([c["l2"] for c in a]) - 0.25) < 0.02
    assert typed("patience", "3") == 3 and math.isclose(typed("target_loss", "0.4"), 0.4)
    assert parse_assignment("learning-rate=0.01,0.1") == ("learning_rate", "0.01,0.1")
