"""Sampled updates: consistency with the exact update, at the rate the theory says (statistical)."""

import numpy as np
import pytest
from conftest import make_algo

from testbed.algorithms.rebel import linear_population_regression
from testbed.policies import LogLinear, TabularSoftmax
from testbed.problems import make_linear, make_tabular

NS = np.unique(np.logspace(2, 5, 7).astype(int))  # 100 ... 100000
SEEDS = 24


def centred_logp_error(a, b, rho):
    """rho-weighted RMS of the difference of log-probabilities, centred per context."""
    d = a.log_probs() - b.log_probs()
    d -= d.mean(axis=1, keepdims=True)
    return np.sqrt(rho @ np.mean(d**2, axis=1))


def fitted_slope(problem, pol, err, **params):
    exact = make_algo("rebel", problem, eta=params["eta"]).update(pol, None).policy
    rms = []
    for n in NS:
        errs = [err(make_algo("rebel", problem, mode="sampled", pairs=int(n), **params)
                    .update(pol, np.random.default_rng(1000 * s + int(n))).policy, exact) for s in range(SEEDS)]
        rms.append(np.sqrt(np.mean(np.square(errs))))
    slope = np.polyfit(np.log(NS), np.log(rms), 1)[0]
    return slope, rms


def test_sampled_rebel_error_shrinks_like_inverse_sqrt_n_linear():
    """Misspecified linear bandit: the sampled least-squares solution's error ~ N^(-1/2).
    Fitted log-log slope over N = 1e2..1e5 (7 sizes x 24 seeds) must lie in [-0.65, -0.35]."""
    p = make_linear("random", contexts=6, actions=5, dim=3, seed=4, misspecification=0.5)
    pol = LogLinear(p.features, np.array([0.3, -0.5, 0.2]))
    slope, rms = fitted_slope(p, pol, lambda a, b: np.linalg.norm(a.params - b.params), eta=1.0)
    assert -0.65 <= slope <= -0.35, (slope, rms)
    assert rms[-1] < rms[0] / 10


def test_sampled_rebel_error_shrinks_like_inverse_sqrt_n_tabular_noisy_rewards():
    """Tabular bandit with Gaussian reward noise (sd 0.5): same N^(-1/2) law."""
    p = make_tabular("random", contexts=4, actions=3, seed=5, noise_std=0.5)
    pol = TabularSoftmax(np.random.default_rng(0).normal(size=(4, 3)))
    slope, rms = fitted_slope(p, pol, lambda a, b: centred_logp_error(a, b, p.rho), eta=1.0)
    assert -0.65 <= slope <= -0.35, (slope, rms)


def test_sampled_rebel_on_realisable_tabular_is_exact_once_every_action_is_seen():
    """No noise and full coverage: the regression is realisable, so least squares recovers the
    exact mirror-descent step from a finite sample (to 1e-8)."""
    p = make_tabular("random", contexts=5, actions=4, seed=6)
    pol = TabularSoftmax(np.random.default_rng(1).normal(size=(5, 4)))
    for y_prime in ("policy", "uniform", "ref"):
        exact = make_algo("rebel", p, eta=2.0).update(pol, None).policy
        sampled = make_algo("rebel", p, eta=2.0, mode="sampled", pairs=4000, y_prime=y_prime)
        step = sampled.update(pol, np.random.default_rng(2))
        np.testing.assert_allclose(step.policy.probs(), exact.probs(), atol=1e-8)
        assert step.loss == pytest.approx(0.0, abs=1e-12)
        assert step.samples == 8000


def test_kl_shaped_sampled_rebel_is_exact_on_realisable_tabular():
    p = make_tabular("gap", contexts=4, actions=5, seed=7)
    pol = TabularSoftmax(np.random.default_rng(3).normal(size=(4, 5)))
    exact = make_algo("rebel", p, eta=2.0, beta=0.3).update(pol, None).policy
    step = make_algo("rebel", p, eta=2.0, beta=0.3, mode="sampled", pairs=5000).update(pol, np.random.default_rng(4))
    np.testing.assert_allclose(step.policy.probs(), exact.probs(), atol=1e-8)


def test_adam_solver_reaches_the_least_squares_solution_of_the_same_batch():
    """K epochs of Adam on rebel_loss converge to the lstsq minimiser of the same sampled batch."""
    p = make_linear("random", contexts=6, actions=5, dim=3, seed=8, misspecification=0.5)
    pol = LogLinear(p.features, np.array([0.1, 0.2, -0.3]))
    common = dict(mode="sampled", pairs=512, eta=1.0)
    ls = make_algo("rebel", p, **common).update(pol, np.random.default_rng(9))
    ad = make_algo("rebel", p, **common, solver="adam", epochs=1500, minibatch=512, lr=0.02).update(
        pol, np.random.default_rng(9))
    np.testing.assert_allclose(ad.policy.params, ls.policy.params, atol=1e-4)
    assert ad.loss == pytest.approx(ls.loss, rel=1e-6)


def test_offline_y_prime_uses_the_fixed_set_and_its_empirical_distribution():
    p = make_linear("random", contexts=5, actions=6, dim=3, seed=10, misspecification=0.3)
    pol = LogLinear(p.features, np.array([0.5, 0.0, -0.5]))
    algo = make_algo("rebel", p, np.random.default_rng(11), eta=1.0, mode="sampled", pairs=300,
                     y_prime="offline", offline_size=3)
    x, y, y2, *_ = algo.sample_pairs(pol, np.random.default_rng(12))
    assert all(b in algo.offline[a] for a, b in zip(x, y2))
    # exact mode uses mu = the empirical distribution of the set
    exact = make_algo("rebel", p, np.random.default_rng(11), eta=1.0, y_prime="offline", offline_size=3)
    np.testing.assert_array_equal(exact.offline, algo.offline)
    mu = np.zeros((5, 6))
    for a in range(5):
        for b in exact.offline[a]:
            mu[a, b] += 1 / 3
    delta, _ = linear_population_regression(p.rho, p.features, pol.probs(), mu, p.rewards, 1.0)
    np.testing.assert_allclose(exact.update(pol, None).policy.params, pol.params + delta, atol=1e-12)


def test_sampled_npg_is_consistent():
    """Sample-Fisher NPG (no damping) approaches exact NPG: error ~ N^(-1/2)."""
    p = make_linear("random", contexts=6, actions=5, dim=3, seed=13, misspecification=0.4)
    pol = LogLinear(p.features, np.array([0.2, -0.1, 0.4]))
    exact = make_algo("npg", p, eta=1.0).update(pol, None).policy
    rms = []
    for n in (1000, 100000):
        errs = [np.linalg.norm(make_algo("npg", p, eta=1.0, mode="sampled", samples=n, damping=0.0)
                               .update(pol, np.random.default_rng(s)).policy.params - exact.params)
                for s in range(SEEDS)]
        rms.append(np.sqrt(np.mean(np.square(errs))))
    assert rms[1] < rms[0] / 5, rms  # expected ratio 1/10


def test_sampled_npg_tabular_single_action_context_gets_no_step():
    """A context in which every sample is the same response carries no information about the others:
    the min-norm step there is 0 (not the inverse of rounding noise)."""
    p = make_tabular("random", contexts=2, actions=4, seed=3)
    pol = TabularSoftmax(np.log([[0.999999, 1e-6 / 3, 1e-6 / 3, 1e-6 / 3], [0.25, 0.25, 0.25, 0.25]]))
    algo = make_algo("npg", p, eta=10.0, mode="sampled", samples=400)
    step = algo.update(pol, np.random.default_rng(0))
    assert np.abs(step.policy.log_probs()[0] - pol.log_probs()[0]).max() < 1e-9
    assert np.abs(step.policy.log_probs()[1] - pol.log_probs()[1]).max() > 1e-2


def test_sampled_npg_tabular_is_consistent_and_stable():
    """Tabular sample-Fisher NPG: with noisy rewards the error to the exact step ~ N^(-1/2) (with exact
    rewards and every response seen it is exact: the per-context fit is realisable); and 200
    iterations at eta = 10 stay finite and improve on pi_0 (rounding-level directions are ignored)."""
    p = make_tabular("random", contexts=4, actions=3, seed=5, noise_std=0.5)
    pol = TabularSoftmax(np.random.default_rng(0).normal(size=(4, 3)))
    exact = make_algo("npg", p, eta=1.0).update(pol, None).policy
    rms = []
    for n in (1000, 100000):
        errs = [centred_logp_error(make_algo("npg", p, eta=1.0, mode="sampled", samples=n)
                                   .update(pol, np.random.default_rng(s)).policy, exact, p.rho) for s in range(SEEDS)]
        rms.append(np.sqrt(np.mean(np.square(errs))))
    assert rms[1] < rms[0] / 5, rms
    big = make_tabular("random", contexts=20, actions=10, seed=0)
    gap0 = big.optimal_value() - big.value(np.full((20, 10), 0.1))
    for eta, factor in ((1.0, 0.05), (10.0, 1.0)):  # at eta = 10 it can lock onto a good action before the best is sampled
        pol = TabularSoftmax(np.zeros((20, 10)))
        algo = make_algo("npg", big, eta=eta, mode="sampled", samples=500)
        rng = np.random.default_rng(1)
        for _ in range(200):
            pol = algo.update(pol, rng).policy
            assert np.all(np.isfinite(pol.params))
        assert big.optimal_value() - big.value(pol.probs()) < factor * gap0, eta


def test_same_seed_same_update():
    p = make_tabular("random", contexts=5, actions=4, seed=1, noise_std=0.2)
    pol = TabularSoftmax(np.zeros((5, 4)))
    for params in (dict(solver="lstsq"), dict(solver="adam", epochs=2)):
        a = make_algo("rebel", p, mode="sampled", pairs=200, **params).update(pol, np.random.default_rng(7))
        b = make_algo("rebel", p, mode="sampled", pairs=200, **params).update(pol, np.random.default_rng(7))
        np.testing.assert_array_equal(a.policy.params, b.policy.params)
