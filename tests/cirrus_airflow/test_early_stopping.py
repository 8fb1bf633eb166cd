"""ASHA and the median stopping rule, decided on scripted loss curves."""

import math

import pytest

from cirrus_airflow.tuning.early_stopping import ASHA, MedianStopping, NoEarlyStopping, make


def test_asha_keeps_about_one_in_eta_at_each_rung_and_never_waits():
    asha = ASHA(grace=1, eta=3)
    assert [asha.rung_resource(k) for k in range(3)] == [1, 3, 9]
    # Rung 0 (resource 1): each arrival against the losses recorded there so far.
    assert asha.report("a", 1.0, 0.50)  # the first at a rung always goes on
    assert not asha.report("b", 1.2, 0.60)  # of 2, only the best goes on
    assert asha.report("c", 1.0, 0.40)  # the best so far
    assert not asha.report("d", 1.0, 0.55)  # third of 4: floor(4/3) = 1 goes on
    assert asha.report("a", 2.0, 0.90)  # between rungs: not judged again
    # Rung 1 (resource 3): a and c climb; c is ahead.
    assert asha.report("c", 3.5, 0.30)
    assert not asha.report("a", 3.0, 0.45)
    assert asha.rungs[0] == [0.50, 0.60, 0.40, 0.55] and asha.rungs[1] == [0.30, 0.45]


def test_asha_judges_a_rung_once_and_not_the_end_of_the_run():
    asha = ASHA(grace=10, eta=2, max_resource=40)
    assert asha.report("a", 5, 9.0)  # before the grace period: nothing to judge
    assert asha.report("a", 10, 0.2) and asha.report("b", 10, 0.1)
    assert not asha.report("c", 10, 0.3)
    assert asha.report("a", 12, 5.0)  # rung 0 already passed
    assert asha._rung_of(40) == 1 and asha._rung_of(80) == 1  # the last rung is below max_resource


def test_asha_judges_a_report_that_skips_rungs_at_each_rung_it_passed():
    asha = ASHA(grace=1, eta=2)
    assert asha.report("a", 1.0, 0.30) and asha.report("a", 2.0, 0.20)
    # b's first evaluation comes late, past rungs 0 and 1: it meets a's losses there.
    assert not asha.report("b", 2.5, 0.40)
    assert asha.rungs[0] == [0.30, 0.40] and asha.rungs[1] == [0.20]  # stopped at rung 0: not recorded above
    assert asha.report("c", 4.5, 0.10)  # better than everything at rungs 0, 1 and 2
    assert asha.rungs[0][-1] == asha.rungs[1][-1] == asha.rungs[2][-1] == 0.10


def test_the_median_rule_stops_what_is_worse_than_the_others_running_means():
    rule = MedianStopping(grace=2, min_others=2)
    curves = {"a": [0.9, 0.7, 0.5, 0.4], "b": [0.8, 0.6, 0.5, 0.45], "c": [1.0, 0.95, 0.9, 0.9]}
    decisions = {}
    for step in range(4):
        for name, curve in curves.items():
            decisions[(name, step)] = rule.report(name, float(step), curve[step])
    assert all(decisions[(n, s)] for n in curves for s in (0, 1))  # before the grace period
    # At step 2, c's best (0.9) is worse than the median of a's and b's means up to step 2.
    assert not decisions[("c", 2)] and decisions[("a", 2)] and decisions[("b", 2)]
    assert math.isclose(sum([0.9, 0.7, 0.5]) / 3, 0.7)


def test_the_median_rule_needs_enough_others():
    rule = MedianStopping(grace=0, min_others=3)
    for name, loss in (("a", 0.1), ("b", 0.2), ("c", 0.3)):
        assert rule.report(name, 1.0, loss)
    assert not rule.report("d", 1.0, 0.9)  # now three others reached resource 1


def test_make_and_bad_reports():
    assert isinstance(make("none", grace=1), NoEarlyStopping) and NoEarlyStopping().report("x", 1, 9)
    with pytest.raises(ValueError, match="early stopping must be one of"):
        make("hyperband", grace=1)
    with pytest.raises(ValueError, match="eta .* must be above 1"):
        ASHA(grace=1, eta=1)
    with pytest.raises(ValueError, match="loss is NaN"):
        ASHA(grace=1).report("a", 1, float("nan"))
    asha = ASHA(grace=1)
    asha.report("a", 1, 0.5)
    assert not asha.report("b", 1, float("inf"))  # a diverged run stops
