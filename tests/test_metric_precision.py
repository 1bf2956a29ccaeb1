"""The sub-optimality column near the optimum, and exact steps at the largest finite step sizes.

J* − J is computed as E_x Σ_y π(y|x)(max r(x) − r(x, y)), a sum of non-negative terms, not as the difference of
two near-equal numbers (whose error is ~eps·|J*|: the difference logged 0 for true gaps of 1e-19 … 1e-28,
−1.1e-16 for exact NPG at η = 50, and −1.2e-10 with rewards shifted by 1e6). The reference is the closed form
π_T ∝ π_0·exp(ηT·r) of exact tabular REBEL (mirror descent), evaluated in mpmath at 60 digits.
"""

import mpmath as mp
import numpy as np
import pytest

from testbed.metrics import bandit_metrics
from testbed.policies import TabularSoftmax
from testbed.problems import TabularBandit, make_tabular
from tests.conftest import make_algo


def mp_gap(p: TabularBandit, log_pi0: np.ndarray, eta_t: float) -> float:
    """E_x Σ_y π_T(y|x)(max r − r(x, y)) for π_T ∝ π_0·exp(ηT·r), at 60 digits."""
    with mp.workdps(60):
        total = mp.mpf(0)
        for x in range(p.num_contexts):
            r = [mp.mpf(float(v)) for v in p.rewards[x]]
            logits = [mp.mpf(float(l)) + mp.mpf(eta_t) * ry for l, ry in zip(log_pi0[x], r)]
            top = max(logits)
            w = [mp.exp(v - top) for v in logits]
            total += mp.mpf(float(p.rho[x])) * mp.fsum(wy * (max(r) - ry) for wy, ry in zip(w, r)) / mp.fsum(w)
        return float(total)


def test_suboptimality_is_exact_to_rounding_near_the_optimum():
    p = make_tabular("gap", contexts=20, actions=10, seed=0, gap=0.1)
    algo, pol = make_algo("rebel", p, eta=5.0), TabularSoftmax(p.log_pi_ref)
    checked = 0
    for t in range(1, 121):
        pol = algo.update(pol, None).policy
        got = bandit_metrics(p, pol)["suboptimality"]
        assert got >= 0.0
        if t % 10 == 0:  # gaps from 1e-3 down to 1e-27
            want = mp_gap(p, p.log_pi_ref, 5.0 * t)
            assert abs(got - want) <= 1e-9 * want, (t, got, want)
            checked += 1
    assert checked == 12 and want < 1e-25


def test_suboptimality_does_not_depend_on_a_reward_offset():
    """The same policy scored on rewards shifted by 1e6 per context: the gap is the same to rounding of its terms
    (the difference J* − J lost 1e-10 absolute there)."""
    rng = np.random.default_rng(0)
    p = make_tabular("random", contexts=5, actions=4, seed=1)
    q = TabularBandit(p.rewards + 1e6, p.rho, p.pi_ref)
    for scale in (1.0, 5.0, 30.0):
        pol = TabularSoftmax(rng.normal(size=(5, 4)) * scale)
        a, b = bandit_metrics(p, pol)["suboptimality"], bandit_metrics(q, pol)["suboptimality"]
        pi = pol.probs()
        with mp.workdps(50):
            want = float(mp.fsum(mp.mpf(float(p.rho[x])) * mp.mpf(float(pi[x, y])) *
                                 (mp.mpf(float(p.rewards[x].max())) - mp.mpf(float(p.rewards[x, y])))
                                 for x in range(5) for y in range(4)))
        assert abs(a - want) <= 1e-13 * want and abs(b - want) <= 1e-9 * want, (scale, a, b, want)


@pytest.mark.parametrize("name", ["rebel", "npg"])
@pytest.mark.parametrize("eta", [1e300, 1e308, np.finfo(float).max])
def test_exact_tabular_step_at_the_largest_finite_eta_is_the_argmax(name, eta):
    """η·r overflows to inf at these step sizes; the step is then taken as η·(s − max s) per row, the same
    distribution: the argmax policy (NaN before: inf − inf in the log-softmax)."""
    p = TabularBandit([[0.0, 4.0, 1.0], [2.0, 0.5, -1.0]])
    new = make_algo(name, p, eta=eta).update(TabularSoftmax(p.log_pi_ref), None).policy
    np.testing.assert_array_equal(new.probs(), [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    m = bandit_metrics(p, new)
    assert m["suboptimality"] == 0.0 and m["reward"] == pytest.approx(3.0, abs=1e-15)


def test_overflow_rows_leave_other_rows_and_stack_members_bit_identical():
    """Only a row whose η·s overflows takes the shifted form: at η = 1e307 the rewards of 50 overflow and those of
    1 do not, and each row gets the bits it gets alone."""
    from testbed.algorithms.base import mirror_step

    log_pi = np.log(np.full((2, 3), 1 / 3))
    s = np.array([[0.0, 50.0, 1.0], [0.0, 1.0, 0.5]])
    both = mirror_step(log_pi, 1e307, s)
    assert np.array_equal(both[1], mirror_step(log_pi[1:], 1e307, s[1:])[0])
    assert np.array_equal(both[1], log_pi[1] + 1e307 * s[1])
    assert np.all(np.isfinite(both[0]) | (both[0] == -np.inf)) and both[0, 1] == log_pi[0, 1]


@pytest.mark.parametrize("beta", [1e-300, 1e-310, 5e-324, 0.0])
def test_the_regularised_optimum_at_a_vanishing_beta_is_pi_ref_on_the_best_responses(beta):
    """pi*_beta ∝ pi_ref·exp(r/beta): as beta → 0 it is pi_ref restricted to argmax r, normalised. r/beta overflowed
    at beta ~ 1e-310 (inf − inf: NaN, and a PPO run with beta 1e-310 stopped with 'kl_reg_gap became nan'); DPO's
    c = beta·s can underflow to 0. A tie at the maximum keeps pi_ref's ratio."""
    p = make_tabular(contexts=3, actions=5, seed=1)
    r = p.rewards.copy()
    r[0, 3] = r[0].max()  # a tie in context 0
    rng = np.random.default_rng(0)
    pi_ref = rng.dirichlet(np.ones(5), size=3)
    q = TabularBandit(r, p.rho, pi_ref)
    best = r == r.max(axis=1, keepdims=True)
    want = np.where(best, pi_ref, 0.0)
    want /= want.sum(axis=1, keepdims=True)
    got = np.exp(q.regularised_optimum_log(beta))
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("beta", [0.3, 1e-3, 1e-300, 1e-310, 5e-324, 0.0])
def test_the_regularised_gap_at_any_beta_equals_its_definition_in_mpmath(beta):
    """kl_reg_gap = J_beta(pi*_beta) − J_beta(pi), J_beta(pi*_beta) = beta·ln sum_y pi_ref·e^{r/beta}, at 60 digits.
    At beta ~ 1e-310, pi*_beta underflows to 0 off the best responses and beta·KL(pi‖pi*_beta) was inf (a PPO run
    with beta 1e-310 stopped 'kl_reg_gap became inf'); the gap is finite, → E_pi[max r − r] as beta → 0."""
    p = make_tabular(contexts=3, actions=4, seed=2)
    rng = np.random.default_rng(3)
    q = TabularBandit(p.rewards, p.rho, rng.dirichlet(np.ones(4), size=3))
    log_pi = np.log(rng.dirichlet(np.ones(4), size=3))
    pi = np.exp(log_pi)
    got = q.kl_reg_gap(pi, beta, log_pi)
    via_metrics = bandit_metrics(q, TabularSoftmax(log_pi), beta)["kl_reg_gap"] if beta > 0 else got
    with mp.workdps(60):
        want = mp.mpf(0)
        for x in range(3):
            r = [mp.mpf(float(v)) for v in q.rewards[x]]
            ref = [mp.mpf(float(v)) for v in q.pi_ref[x]]
            px = [mp.e ** mp.mpf(float(v)) for v in log_pi[x]]
            m = max(r)
            value = mp.fsum(a * b for a, b in zip(px, r))
            if beta == 0:
                gap = m - value
            else:
                b = mp.mpf(beta)
                opt = m + b * mp.log(mp.fsum(w * mp.e ** ((v - m) / b) for w, v in zip(ref, r)))
                kl = mp.fsum(a * (mp.log(a) - mp.log(w)) for a, w in zip(px, ref))
                gap = opt - (value - b * kl)
            want += mp.mpf(float(q.rho[x])) * gap
    assert abs(got - float(want)) <= 1e-12 * abs(float(want))
    assert via_metrics == pytest.approx(got, rel=1e-14)
