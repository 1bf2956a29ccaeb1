"""Exact (population) updates against closed forms and independent computations (THEORY.md B, C)."""

import numpy as np
import pytest
import torch
from conftest import make_algo, mp_exact_update_log_probs
from scipy.special import softmax

from testbed.policies import LogLinear, TabularSoftmax, initial_policy
from testbed.problems import LinearBandit, TabularBandit, make_linear, make_tabular


def random_tabular(seed, X=6, Y=5):
    rng = np.random.default_rng(seed)
    return TabularBandit(rng.normal(size=(X, Y)), rng.dirichlet(np.ones(X)), rng.dirichlet(np.ones(Y), size=X))


def random_policy(seed, X, Y):
    return TabularSoftmax(np.random.default_rng(seed).normal(scale=2.0, size=(X, Y)))


@pytest.mark.parametrize("eta", [0.01, 1.0, 100.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tabular_rebel_is_mirror_descent(eta, seed):
    """pi_{t+1} = pi_t·exp(eta·r)/Z to 1e-10 (THEORY.md C)."""
    p = random_tabular(seed)
    pol = random_policy(seed + 10, *p.rewards.shape)
    new = make_algo("rebel", p, eta=eta).update(pol, None).policy
    expected = pol.probs() * np.exp(eta * (p.rewards - p.rewards.max(axis=1, keepdims=True)))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(new.probs(), expected, rtol=0, atol=1e-10)


def one_hot_linear(p: TabularBandit) -> LinearBandit:
    X, Y = p.rewards.shape
    return LinearBandit(np.eye(X * Y).reshape(X, Y, X * Y), rewards=p.rewards, rho=p.rho, pi_ref=p.pi_ref)


@pytest.mark.parametrize("y_prime", ["policy", "uniform", "ref"])
def test_tabular_closed_form_solves_the_population_regression(y_prime):
    """The closed form equals the weighted least-squares solution over all (x, y, y'), solved by the
    normal equations on one-hot features (an independent route through the log-linear solver),
    and a brute-force least squares over the enumerated pairs."""
    p = random_tabular(3, X=4, Y=3)
    X, Y = p.rewards.shape
    tab = random_policy(4, X, Y)
    lin = LogLinear(one_hot_linear(p).features, tab.params.ravel())
    eta = 0.7
    a = make_algo("rebel", p, eta=eta, y_prime=y_prime).update(tab, None)
    b = make_algo("rebel", one_hot_linear(p), eta=eta, y_prime=y_prime).update(lin, None)
    np.testing.assert_allclose(a.policy.probs(), b.policy.probs(), atol=1e-10)
    assert b.loss == pytest.approx(0.0, abs=1e-10)  # tabular class is realisable
    # brute force: enumerate every (x, y, y') with weight rho·pi·mu, solve sqrt(w)-weighted lstsq
    pi = tab.probs()
    mu = {"policy": pi, "uniform": np.full((X, Y), 1 / Y), "ref": p.pi_ref}[y_prime]
    rows, targets, w = [], [], []
    for x in range(X):
        for y in range(Y):
            for y2 in range(Y):
                d = np.zeros(X * Y)
                d[x * Y + y] += 1
                d[x * Y + y2] -= 1
                rows.append(d)
                targets.append(eta * (p.rewards[x, y] - p.rewards[x, y2]))
                w.append(p.rho[x] * pi[x, y] * mu[x, y2])
    sw = np.sqrt(np.array(w))
    delta = np.linalg.lstsq(np.array(rows) * sw[:, None], np.array(targets) * sw, rcond=None)[0]
    brute = softmax(tab.params + delta.reshape(X, Y), axis=1)
    np.testing.assert_allclose(a.policy.probs(), brute, atol=1e-10)


def test_tabular_npg_closed_form_equals_fisher_pseudo_inverse():
    """Tabular NPG theta + eta·F⁺∇J with F, ∇J built explicitly over all X·Y logits."""
    p = random_tabular(5, X=4, Y=5)
    X, Y = p.rewards.shape
    pol = random_policy(6, X, Y)
    pi = pol.probs()
    F = np.zeros((X * Y, X * Y))
    g = np.zeros(X * Y)
    for x in range(X):
        for y in range(Y):
            score = np.zeros(X * Y)
            score[x * Y:(x + 1) * Y] = -pi[x]
            score[x * Y + y] += 1
            F += p.rho[x] * pi[x, y] * np.outer(score, score)
            g += p.rho[x] * pi[x, y] * score * p.rewards[x, y]
    eta = 2.5
    theta = pol.params.ravel() + eta * np.linalg.pinv(F, rcond=1e-12, hermitian=True) @ g
    new = make_algo("npg", p, eta=eta).update(pol, None).policy
    np.testing.assert_allclose(new.probs(), softmax(theta.reshape(X, Y), axis=1), atol=1e-10)


def torch_fisher_and_gradient(p: LinearBandit, theta: np.ndarray):
    """F and ∇J by autograd on J(theta) and explicit score outer products (independent of the package)."""
    phi = torch.as_tensor(p.features)
    th = torch.tensor(theta, requires_grad=True)
    logp = torch.log_softmax(phi @ th, dim=1)
    J = (torch.as_tensor(p.rho)[:, None] * logp.exp() * torch.as_tensor(p.rewards)).sum()
    (grad,) = torch.autograd.grad(J, th)
    pi = logp.detach().exp().numpy()
    F = np.zeros((len(theta), len(theta)))
    for x in range(p.num_contexts):
        for y in range(p.num_actions):
            s = torch.autograd.functional.jacobian(lambda t, x=x, y=y: torch.log_softmax(phi[x] @ t, 0)[y], th).numpy()
            F += p.rho[x] * pi[x, y] * np.outer(s, s)
    return F, grad.numpy()


@pytest.mark.parametrize("misspecification", [0.0, 0.4])
def test_loglinear_rebel_with_y_prime_from_pi_t_is_npg(misspecification):
    """Exact REBEL (y, y' i.i.d. from pi_t) = theta + eta·F⁺∇J to 1e-8; with y' ~ uniform it differs."""
    p = make_linear("random", contexts=7, actions=6, dim=4, seed=11, misspecification=misspecification)
    theta = np.random.default_rng(1).normal(size=4)
    pol = LogLinear(p.features, theta)
    F, g = torch_fisher_and_gradient(p, theta)
    for eta in (0.1, 1.0, 10.0):
        npg_theta = theta + eta * np.linalg.solve(F, g)
        rebel = make_algo("rebel", p, eta=eta).update(pol, None).policy
        npg = make_algo("npg", p, eta=eta).update(pol, None).policy
        np.testing.assert_allclose(rebel.params, npg_theta, rtol=0, atol=1e-8)
        np.testing.assert_allclose(npg.params, npg_theta, rtol=0, atol=1e-8)
        other = make_algo("rebel", p, eta=eta, y_prime="uniform").update(pol, None).policy
        if misspecification == 0:
            # realisable r = phi·theta*: every full-rank mu gives delta = eta·theta*, and so does NPG
            np.testing.assert_allclose(other.params, theta + eta * p.theta_star, atol=1e-8)
            np.testing.assert_allclose(npg_theta, theta + eta * p.theta_star, atol=1e-8)
        else:  # a generic (misspecified) instance: y' ~ mu != pi_t is not NPG
            assert np.max(np.abs(other.params - npg_theta)) / eta > 1e-3


def bound_instances():
    for fam in ("random", "needle", "gap"):
        for seed in (0, 1):
            yield make_tabular(fam, contexts=8, actions=6, seed=seed)


@pytest.mark.parametrize("algo", ["rebel", "npg"])
@pytest.mark.parametrize("eta", [0.1, 1.0, 10.0])
def test_monotone_improvement_and_mirror_descent_bound(algo, eta):
    """J(pi_{t+1}) >= J(pi_t) and J* - J(pi_T) <= log|Y|/(eta·T) + 1/T for every T <= 1000
    (Agarwal et al. 2021, Thm 16, gamma = 0; rewards in [0, 1], uniform pi_0)."""
    for p in bound_instances():
        assert p.rewards.min() >= 0 and p.rewards.max() <= 1
        pol = initial_policy(p)
        np.testing.assert_allclose(pol.probs(), 1 / p.num_actions)
        a = make_algo(algo, p, eta=eta)
        J = [p.value(pol.probs())]
        for _ in range(1000):
            pol = a.update(pol, None).policy
            J.append(p.value(pol.probs()))
        J = np.array(J)
        assert np.all(np.diff(J) >= -1e-12), f"{p.name}: J decreased"
        T = np.arange(1, 1001)
        gap = p.optimal_value() - J[1:]
        assert np.all(gap <= np.log(p.num_actions) / (eta * T) + 1 / T), p.name
        # the closed form pi_T ∝ pi_0·exp(eta·T·r) (derived)
        np.testing.assert_allclose(pol.probs(), softmax(eta * 1000 * p.rewards, axis=1), atol=1e-10)


@pytest.mark.parametrize("algo", ["rebel", "npg"])
@pytest.mark.parametrize("eta,beta", [(1.0, 0.1), (5.0, 0.1), (0.5, 1.0), (2.0, 0.5)])
def test_kl_regularised_contraction(algo, eta, beta):
    """span_y(ln pi_t - ln pi*_beta) = (1 - eta·beta)^t · span_0 per context (THEORY.md B), to 1e-8."""
    p = random_tabular(7)
    pol = random_policy(8, *p.rewards.shape)
    target = p.regularised_optimum_log(beta)

    def span(lp):
        d = lp - target
        return d.max(axis=1) - d.min(axis=1)

    s0 = span(pol.log_probs())
    a = make_algo(algo, p, eta=eta, beta=beta)
    prev = s0
    for t in range(1, 31):
        pol = a.update(pol, None).policy
        now = span(pol.log_probs())
        np.testing.assert_allclose(now, (1 - eta * beta) ** t * s0, rtol=0, atol=1e-8)
        big = prev > 1e-6  # the per-step ratio itself, where the span is far from rounding level
        if eta * beta < 1 and big.any():
            np.testing.assert_allclose(now[big] / prev[big], 1 - eta * beta, rtol=1e-6)
        prev = now


def test_kl_regularised_one_step_at_eta_beta_one():
    p = random_tabular(9)
    pol = random_policy(10, *p.rewards.shape)
    new = make_algo("rebel", p, eta=4.0, beta=0.25).update(pol, None).policy
    np.testing.assert_allclose(new.log_probs(), p.regularised_optimum_log(0.25), atol=1e-10)


def test_contexts_with_zero_mass_are_left_alone():
    """rho(x) = 0: no data for x, so both exact updates leave its policy unchanged."""
    p = random_tabular(12, X=3, Y=4)
    p = TabularBandit(p.rewards, [0.5, 0.0, 0.5], p.pi_ref)
    pol = random_policy(13, 3, 4)
    for algo in ("rebel", "npg"):
        new = make_algo(algo, p, eta=1.0).update(pol, None).policy
        np.testing.assert_allclose(new.log_probs()[1], pol.log_probs()[1], atol=1e-12)
        assert np.abs(new.log_probs()[0] - pol.log_probs()[0]).max() > 1e-3


def test_exact_linear_loss_is_the_population_residual():
    """The reported loss equals E[((1/eta)·deltaᵀΔφ - Δr)²] enumerated over all (x, y, y')."""
    p = make_linear("random", contexts=5, actions=4, dim=3, seed=2, misspecification=0.5)
    pol = LogLinear(p.features, np.array([0.2, -0.4, 0.1]))
    eta = 1.5
    step = make_algo("rebel", p, eta=eta, y_prime="uniform").update(pol, None)
    delta = step.policy.params - pol.params
    pi = pol.probs()
    total = 0.0
    for x in range(5):
        for y in range(4):
            for y2 in range(4):
                dphi = p.features[x, y] - p.features[x, y2]
                total += p.rho[x] * pi[x, y] * 0.25 * (delta @ dphi / eta - (p.rewards[x, y] - p.rewards[x, y2])) ** 2
    assert step.loss == pytest.approx(total, rel=1e-9)
    assert step.loss > 1e-4  # misspecified: not realisable


def test_log_softmax_policy_stays_normalised_at_huge_eta():
    p = random_tabular(14)
    pol = random_policy(15, *p.rewards.shape)
    new = make_algo("rebel", p, eta=1e6).update(pol, None).policy
    assert np.all(np.isfinite(new.log_probs()))
    # the package's own output is normalised (not a re-normalised copy of it) ...
    np.testing.assert_allclose(new.probs().sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.logaddexp.reduce(new.log_probs(), axis=1), 0.0, rtol=0, atol=1e-15)
    # ... and is the closed form log_softmax(ln pi + eta·r) in mpmath, to 1e-12·eta·|r|max in log-probability
    want = mp_exact_update_log_probs(pol.log_probs(), p.pi_ref, p.rewards, 1e6)
    np.testing.assert_allclose(new.log_probs(), want, rtol=0, atol=1e-12 * 1e6 * np.abs(p.rewards).max())
    np.testing.assert_allclose(new.probs(), p.optimal_policy(), atol=1e-12)
