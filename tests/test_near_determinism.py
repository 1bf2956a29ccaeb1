"""Exact log-linear REBEL and NPG near deterministic policies, against an NPG step in high precision
(mpmath, 80 digits), and the minimax-winner LP and KL metrics at rounding level (issue 14, items 1-4, 8;
testbed/THEORY.md §C).

Instances: "parameters of size 20-50" (logits up to 20-50 in magnitude, so pi_t has entries down to
~1e-40), eta in {1, 10, 100, 1e4}, rewards up to ±1e3, d below X·Y (both realisable, r = φ·theta*,
and not) and above X·Y, one-hot features (the tabular class).
"""

import mpmath as mp
import numpy as np
import pytest
from conftest import make_algo
from scipy.special import log_softmax

from testbed.metrics import bandit_metrics
from testbed.policies import LogLinear, TabularSoftmax, initial_policy
from testbed.policies.natural import natural_step
from testbed.problems import LinearBandit, PreferenceBandit, TabularBandit, make_linear, minimax_winner

DIGITS = 80


@mp.workdps(DIGITS)  # not the global precision: another test file's setting must not change it
def mp_npg_step(rho, phi, theta, q, eta):
    """eta·F⁺∇J in 80-digit arithmetic: F = E_x Cov_pi(φ), ∇J = E_x Cov_pi(φ, q), min-norm through a
    symmetric eigendecomposition with the exact zeros (rank deficiency) cut at 1e-60 of the largest."""
    X, Y, d = phi.shape
    F, g = mp.zeros(d, d), mp.zeros(d, 1)
    th = [mp.mpf(float(v)) for v in theta]
    for x in range(X):
        f = [[mp.mpf(float(phi[x, y, k])) for k in range(d)] for y in range(Y)]
        logit = [mp.fsum(f[y][k] * th[k] for k in range(d)) for y in range(Y)]
        top = max(logit)
        w = [mp.exp(v - top) for v in logit]
        p = [v / mp.fsum(w) for v in w]
        m = [mp.fsum(p[y] * f[y][k] for y in range(Y)) for k in range(d)]
        qb = mp.fsum(p[y] * mp.mpf(float(q[x, y])) for y in range(Y))
        for y in range(Y):
            c = [f[y][k] - m[k] for k in range(d)]
            wy = mp.mpf(float(rho[x])) * p[y]
            for i in range(d):
                g[i] += wy * c[i] * (mp.mpf(float(q[x, y])) - qb)
                for j in range(d):
                    F[i, j] += wy * c[i] * c[j]
    E, Q = mp.eigsy(F)
    top = max(abs(e) for e in E)
    delta = [mp.mpf(0)] * d
    for k in range(d):
        if abs(E[k]) > top * mp.mpf(10) ** -60:
            coef = mp.fsum(Q[i, k] * g[i] for i in range(d)) / E[k]
            delta = [delta[i] + coef * Q[i, k] for i in range(d)]
    return np.array([float(eta * v) for v in delta])


def instance(kind, seed):
    """(rho, phi, theta, r) with X = 3 contexts, Y = 4 responses."""
    rng = np.random.default_rng(seed)
    X, Y = 3, 4
    rho = rng.dirichlet(np.ones(X))
    if kind == "onehot":
        phi = np.eye(X * Y).reshape(X, Y, X * Y)
        theta = rng.uniform(-50, 50, size=X * Y)
        return rho, phi, theta, rng.uniform(-1e3, 1e3, size=(X, Y))
    d = {"below": 5, "below-realisable": 5, "above": 20}[kind]
    phi = rng.normal(size=(X, Y, d))
    theta = rng.normal(size=d)
    theta *= rng.uniform(20, 50) / np.max(np.abs(phi @ theta))
    r = phi @ rng.uniform(-1e3, 1e3, size=d) if kind == "below-realisable" else rng.uniform(-1e3, 1e3, size=(X, Y))
    if kind == "below":
        r = r / 1e3  # a non-realisable fit: small rewards keep every direction identifiable in float64
    return rho, phi, theta, r


CASES = [(kind, seed, eta) for kind in ("onehot", "below", "below-realisable", "above")
         for seed, eta in ((0, 1.0), (1, 10.0), (2, 100.0), (3, 1e4))]


@pytest.mark.parametrize("kind,seed,eta", CASES)
def test_exact_rebel_and_npg_steps_match_a_high_precision_npg_step(kind, seed, eta):
    """The exact REBEL (y' ~ pi_t) and NPG steps on a near-deterministic log-linear policy equal the
    80-digit NPG step: the new policy's log-probabilities to 1e-8 (every response, however
    improbable) and the step itself to 1e-8 relative."""
    rho, phi, theta, r = instance(kind, seed)
    p = LinearBandit(phi, rewards=r, rho=rho)
    pol = LogLinear(phi, theta)
    assert pol.probs().min() < 1e-12  # near-deterministic
    ref = mp_npg_step(rho, phi, theta, r, eta)
    want = LogLinear(phi, theta + ref).log_probs()
    for name in ("rebel", "npg"):
        new = make_algo(name, p, eta=eta).update(pol, None).policy
        got = new.params - theta
        assert np.max(np.abs(new.log_probs() - want)) <= 1e-8 * max(1.0, np.max(np.abs(want))), name
        assert np.linalg.norm(got - ref) <= 1e-8 * np.linalg.norm(ref), name


def test_the_issue_example_moves_rebel_like_npg():
    """φ = [[0], [1]], r = [1, 0], theta_t = 40, eta = 30: every step moves theta by eta·(r1 - r0) = -30
    (one context, two responses: the log-linear class is the tabular one)."""
    p = LinearBandit(np.array([[[0.0], [1.0]]]), rewards=np.array([[1.0, 0.0]]))
    for name in ("rebel", "npg"):
        alg, pol = make_algo(name, p, eta=30.0), LogLinear(p.features, np.array([40.0]))
        for t in range(1, 4):
            pol = alg.update(pol, None).policy
            assert pol.params[0] == pytest.approx(40.0 - 30.0 * t, rel=1e-12), (name, t)


def test_npg_and_rebel_with_a_subnormal_fisher_take_the_finite_step():
    """eta = 700 from theta = 0: after one step pi has an entry e^-700 (Fisher ~1e-304, subnormal
    products); the true step stays -700 per iteration, five iterations running."""
    p = LinearBandit(np.array([[[0.0], [1.0]]]), rewards=np.array([[1.0, 0.0]]))
    for name in ("rebel", "npg"):
        alg, pol = make_algo(name, p, eta=700.0), initial_policy(p, "loglinear")
        for t in range(1, 6):
            pol = alg.update(pol, None).policy
            assert np.isfinite(pol.params).all()
            assert pol.params[0] == pytest.approx(-700.0 * t, rel=1e-12), (name, t)


@pytest.mark.parametrize("family", ["gap", "random"])
@pytest.mark.parametrize("eta", [10.0, 100.0])
def test_exact_runs_on_realisable_linear_problems_improve_monotonically_and_agree(family, eta):
    """On a realisable linear problem exact REBEL and NPG are mirror descent, pi_{t+1} ∝ pi_t·exp(eta·r):
    sub-optimality never increases (to 1e-15) and the two runs stay equal (to 1e-12), 60 iterations
    (the gap family reached 0 and jumped to 0.89 before the fix). Both runs share one code path, so their agreement
    alone could not catch a bug in it: in closed form, r = phi·theta* makes each exact step delta = eta·theta*, so
    theta_t = theta_0 + eta·t·theta* (to 1e-13 of |theta_t|max; measured <= 1.3e-15 at t = 60)."""
    p = make_linear(family, contexts=20, actions=10, dim=4, seed=0)
    assert p.misspecification() == 0.0
    runs = {}
    for name in ("rebel", "npg"):
        alg, pol = make_algo(name, p, eta=eta), initial_policy(p, "loglinear")
        theta0 = pol.params.copy()
        subs = []
        for t in range(1, 61):
            pol = alg.update(pol, None).policy
            closed = theta0 + eta * t * p.theta_star
            np.testing.assert_allclose(pol.params, closed, rtol=0, atol=1e-13 * np.abs(closed).max(), err_msg=name)
            subs.append(p.optimal_value() - p.value(pol.probs()))
        runs[name] = np.array(subs)
        assert np.max(np.diff(runs[name])) <= 1e-15, name
    np.testing.assert_allclose(runs["rebel"], runs["npg"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("y_prime", ["policy", "uniform", "ref"])
def test_one_hot_features_reach_tiny_regularised_optima_in_log_space(y_prime):
    """The cut-off regime of testbed/policies/natural.py: with one-hot features (realisable) and
    beta = 0.01, pi*_beta ∝ pi_ref·exp(r/beta) has entries ~1e-40; one exact REBEL step at eta·beta = 1
    lands on it, and stays there. The log-linear step equals the tabular closed form in log space to 1e-8 for every
    entry (the 1e-12 eigenvalue cut of the old solver left them tens of nats off), kl_reg_gap ≈ 0."""
    rng = np.random.default_rng(5)
    X, Y, beta = 4, 6, 0.01
    r = rng.uniform(0, 1, size=(X, Y))
    tab = TabularBandit(r, rng.dirichlet(np.ones(X)), rng.dirichlet(np.ones(Y), size=X))
    lin = LinearBandit(np.eye(X * Y).reshape(X, Y, X * Y), rewards=r, rho=tab.rho, pi_ref=tab.pi_ref)
    target = tab.regularised_optimum_log(beta)
    assert target.min() < np.log(1e-30)
    theta0 = rng.normal(size=X * Y)
    a, b = TabularSoftmax(theta0.reshape(X, Y)), LogLinear(lin.features, theta0)
    ta = make_algo("rebel", tab, eta=1 / beta, beta=beta, y_prime=y_prime)
    tb = make_algo("rebel", lin, eta=1 / beta, beta=beta, y_prime=y_prime)
    for _ in range(3):  # pi*_beta is the fixed point: from the second step on, pi_t itself has the 1e-40 entries
        a, b = ta.update(a, None).policy, tb.update(b, None).policy
        np.testing.assert_allclose(a.log_probs(), target, rtol=0, atol=1e-8)
        np.testing.assert_allclose(b.log_probs(), target, rtol=0, atol=1e-8)
        assert lin.kl_reg_gap(b.probs(), beta, b.log_probs()) <= 1e-12


def test_the_weighted_stage_keeps_directions_the_old_cut_dropped():
    """A non-realisable problem (d < X·Y) whose Fisher eigenvalues span 1e-16: the centred square-root
    rows keep every direction (singular values down to ~1e-8 of the largest, above the 1e-12 cut) and
    match 80 digits; dropping eigenvalues below 1e-12 of F, the old cut, moves the step by O(1)."""
    rho, phi, theta, r = instance("below", 23)
    pol = LogLinear(phi, theta)
    pi = pol.probs()
    m = np.einsum("xy,xyd->xd", pi, phi)
    c = phi - m[:, None, :]
    F = np.einsum("x,xy,xyi,xyj->ij", rho, pi, c, c)
    ev = np.linalg.eigvalsh(F)
    assert ev.min() / ev.max() < 1e-14  # beyond the old cut
    ref = mp_npg_step(rho, phi, theta, r, 1.0)
    got = natural_step(rho, phi, r, pi, None, 1.0)
    assert np.linalg.norm(got - ref) <= 1e-8 * np.linalg.norm(ref)
    g = np.einsum("x,xy,xyi,xy->i", rho, pi, c, r - np.sum(pi * r, -1, keepdims=True))
    old = np.linalg.pinv(F, rtol=1e-12, hermitian=True) @ g
    assert np.linalg.norm(old - ref) > 1e-3 * np.linalg.norm(ref)


# ----- item 8: minimax LP with nearly all ties, KL at rounding level -------------------------------
def near_tie_game(Y, eps, seed):
    A = np.random.default_rng(seed).uniform(-1, 1, size=(Y, Y))
    return 0.5 + (A - A.T) / 2 * eps


@pytest.mark.parametrize("Y,eps,seed", [(21, 1e-9, 30), (40, 1e-10, 31), (55, 1e-11, 32), (30, 1e-12, 33), (8, 1e-15, 34)])
def test_minimax_winner_when_nearly_every_pair_is_a_tie(Y, eps, seed):
    """|P - ½| ≤ eps ≤ 1e-9 everywhere: the LP returns a distribution with exploitability ≤ 1e-12·(1 + eps·1e3)
    (the game is scale-free, so it is solved at scale 1), checked by an independent exploitability."""
    P = near_tie_game(Y, eps, seed)
    pi = minimax_winner(P)
    assert pi.min() >= 0 and abs(pi.sum() - 1) < 1e-12
    with mp.workdps(DIGITS):
        expl = max(mp.fsum(mp.mpf(float(P[y, z])) * mp.mpf(float(pi[z])) for z in range(Y)) for y in range(Y)) - mp.mpf(0.5)
    assert float(expl) <= 1e-12 * eps * 1e3 + 1e-16


def test_minimax_winner_of_exact_ties_is_uniform():
    np.testing.assert_array_equal(minimax_winner(np.full((4, 4), 0.5)), np.full(4, 0.25))


def test_kl_metrics_are_never_negative_at_rounding_level():
    """pi = pi_ref up to one ulp per entry: E_x KL is 0 up to rounding (the raw sum is negative for some
    of 20 instances), and every KL metric reports it as >= 0 and <= 1e-15."""
    raws = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        X, Y = 30, 7
        pi_ref = rng.dirichlet(np.ones(Y), size=X)
        p = TabularBandit(rng.uniform(size=(X, Y)), pi_ref=pi_ref)
        log_pi = log_softmax(np.log(pi_ref) + np.where(np.arange(Y) % 2, 1, -1) * 1e-16, axis=1)
        raws.append(p.rho @ np.sum(np.exp(log_pi) * (log_pi - p.log_pi_ref), axis=1))
        pb = PreferenceBandit(np.stack([np.full((Y, Y), 0.5)] * X), pi_ref=pi_ref)
        values = [bandit_metrics(p, TabularSoftmax(log_pi), beta=0.0)["kl_ref"], p.kl_ref(np.exp(log_pi), log_pi),
                  p.kl_ref(np.exp(log_pi)), pb.kl_ref(np.exp(log_pi), log_pi)]
        assert all(0.0 <= v <= 1e-15 for v in values), (seed, values)
    assert min(raws) < 0  # the clip is exercised
