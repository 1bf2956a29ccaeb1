"""DPO on a preference problem (``labels: preference``, what was ``dpo_pref``) is a mode of the one DPO: its update
against hand computations, and against DPO with Bradley–Terry labels on the equivalent reward problem."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, log_softmax

from testbed.errors import InputError
from testbed.experiments.spec import parse_spec
from testbed.policies import TabularSoftmax
from testbed.problems import PreferenceBandit, TabularBandit, make_preference
from testbed.problems.preference import bradley_terry
from tests.conftest import make_algo

PI_REF = [0.5, 0.3, 0.2]


def test_one_gradient_step_is_the_closed_form_gradient_of_the_independent_pair_loss():
    """Population loss over (x, y, y') with y, y' ~ pi_ref independently given y' != y, chosen y w.p. P(y ≻ y'):
    L = sum_{y != y'} w·softplus(-beta·(h(y) - h(y'))), w ∝ rho·pi_ref(y)·pi_ref(y')·P(y ≻ y'), h = ln pi/pi_ref.
    As d h(y)/d theta = e_y - pi, d L/d theta[x] = sum w·(-beta·sigma(-m))·(e_y - e_y'): no torch involved."""
    p = make_preference("nlhf", contexts=2, eps=0.2, pi_ref=PI_REF)
    theta = np.random.default_rng(0).normal(size=(2, 3))
    beta, lr = 0.7, 0.3
    step = make_algo("dpo", p, labels="preference", mode="population", pair_law="independent", optimizer="gd",
                     beta=beta, lr=lr).update(TabularSoftmax(theta), None)
    X, Y = 2, 3
    w = p.rho[:, None, None] * p.pi_ref[:, :, None] * p.pi_ref[:, None, :] * p.preferences * (1 - np.eye(Y))
    w /= w.sum()
    h = log_softmax(theta, axis=1) - np.log(p.pi_ref)
    m = beta * (h[:, :, None] - h[:, None, :])
    coef = w * (-beta * expit(-m))  # d L / d (h(y) - h(y')) for the row (x, chosen y, rejected y')
    grad = coef.sum(axis=2) - coef.sum(axis=1)
    np.testing.assert_allclose(step.policy.log_probs(), log_softmax(theta - lr * grad, axis=1), rtol=0, atol=1e-13)
    h = log_softmax(theta - lr * grad, axis=1) - np.log(p.pi_ref)  # the reported loss: at the updated policy
    m = beta * (h[:, :, None] - h[:, None, :])
    assert step.loss == pytest.approx(float(np.sum(w * np.logaddexp(0.0, -m))), rel=1e-13)
    assert (step.samples, step.queries) == (None, None) and X == p.num_contexts


@pytest.mark.parametrize("pair_law", ["distinct", "independent"])
def test_preference_labels_on_a_bradley_terry_problem_reach_pi_star_like_bt_labels_on_its_rewards(pair_law):
    """P = sigma((r(y) - r(y'))/s) is what labels: bt of temperature s draws on the reward problem r: population DPO
    (damped Newton) on either reaches pi*_{beta·s} ∝ pi_ref·exp(r/(beta·s)) (testbed/THEORY.md §D), the same policy."""
    rng = np.random.default_rng(3)
    r, s, beta = rng.uniform(size=(2, 4)), 0.5, 0.8
    ref = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    pref = PreferenceBandit(bradley_terry(r, s), pi_ref=ref)
    reward = TabularBandit(r, pi_ref=ref)
    target = np.exp(reward.regularised_optimum_log(beta * s))
    finals = []
    for problem, labels in ((pref, "preference"), (reward, "bt")):
        algo = make_algo("dpo", problem, labels=labels, temperature=s, mode="population", pair_law=pair_law, beta=beta)
        pol = TabularSoftmax(np.log(ref))
        for _ in range(40):
            pol = algo.update(pol, None).policy
        finals.append(pol.probs())
        np.testing.assert_allclose(pol.probs(), target, rtol=0, atol=1e-10)
    np.testing.assert_allclose(finals[0], finals[1], rtol=0, atol=1e-12)


def test_an_offline_preference_data_set_is_drawn_from_pi_ref_pairs_and_counted_at_update_one():
    """Independent pairs: ties y = y' appear at the rate sum_y pi_ref(y)², and every label is one oracle query."""
    p = make_preference("rps", pi_ref=PI_REF)
    rng = np.random.default_rng(1)
    n = 20000
    algo = make_algo("dpo", p, rng, labels="preference", mode="offline", pair_law="independent", pairs=n)
    ties = np.mean(algo.data.chosen == algo.data.rejected)
    rate = float(np.sum(np.square(PI_REF)))
    assert abs(ties - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # 4 sd
    assert (algo.initial_samples, algo.initial_queries) == (0, 0)
    first = algo.update(TabularSoftmax(np.log(p.pi_ref)), rng)
    second = algo.update(first.policy, rng)
    assert (first.samples, first.queries, second.samples, second.queries) == (2 * n, n, 0, 0)


def spec(problem: dict, algorithm: dict) -> dict:
    return {"problems": [problem], "algorithms": [algorithm], "iterations": 1}


def test_dpo_runs_on_the_problem_kind_its_labels_name():
    rps = {"kind": "preference", "family": "rps"}
    tab = {"kind": "tabular", "family": "random", "contexts": 2, "actions": 3, "seed": 0}
    with pytest.raises(InputError, match=r"algorithm 'dpo' runs on reward problems, but problem 'rps' is a preference "
                                         r"problem \(labels: preference runs DPO on a preference problem\)"):
        parse_spec(spec(rps, {"name": "dpo"}))
    with pytest.raises(InputError, match=r"algorithm 'dpo' runs on preference problems, but problem '.*' is a reward problem$"):
        parse_spec(spec(tab, {"name": "dpo", "labels": "preference"}))
    assert parse_spec(spec(rps, {"name": "dpo", "labels": "preference"})).runs[0].algorithm == "dpo"
