"""REBEL on preferences, exact: the population pair regression with product weights in closed form
(testbed/policies/lstsq_onehot.py::product_pair_regression, testbed/THEORY.md §E).

The reference is independent of the closed form: the weighted normal equations (Laplacian L, right-hand
side β) built entry by entry in mpmath from the float inputs and solved by LU as (L + 11ᵀ/Y)f = β (the graph
is connected when every weight is positive, and β ⟂ 1), at enough digits for the weights' dynamic range
(weights down to e^-3000). Regimes: random policies, near-deterministic ones (probabilities that underflow
to 0 in float64 while their logarithms are finite), step sizes 1e-6 … 1e4, y' ~ pi_t and y' uniform, both
targets, a context of probability 0. The float64 pseudo-inverse with a relative cut-off (the step before)
was off by 0.27-0.37 in log-probability from exact Hedge once pi_t was near-deterministic (spread >= 10).
"""

import zlib

import mpmath as mp
import numpy as np
import pytest

from testbed.algorithms import ALGORITHMS, build_config
from testbed.algorithms.preference import _pair_law_factors, ipo_target_log
from testbed.datasets import pair_probs
from testbed.policies import TabularSoftmax
from testbed.policies.lstsq_onehot import product_pair_regression
from testbed.problems import PreferenceBandit, make_preference


def mp_reference(log_a, log_b, target):
    """f per row, mean 0 over the row, from the normal equations at high precision (the graph of every row with
    weight is connected here)."""
    out = np.zeros(log_a.shape)
    logs = np.concatenate([log_a.ravel(), log_b.ravel()])
    spread = float(np.max(np.abs(logs[np.isfinite(logs)])))  # -inf: a weight 0
    with mp.workdps(int(60 + 2 * spread / np.log(10))):
        for x in range(log_a.shape[0]):
            Y = log_a.shape[1]
            a = [mp.exp(mp.mpf(float(v))) for v in log_a[x]]
            b = [mp.exp(mp.mpf(float(v))) for v in log_b[x]]
            t = [[mp.mpf(float(target[x, i, j])) for j in range(Y)] for i in range(Y)]
            S = [[a[i] * b[j] + a[j] * b[i] for j in range(Y)] for i in range(Y)]
            if all(S[i][j] == 0 for i in range(Y) for j in range(Y) if i != j):
                continue  # no pair of distinct responses has weight: no information, f = 0 (minimum norm)
            L = mp.matrix(Y, Y)
            rhs = mp.matrix(Y, 1)
            for i in range(Y):
                for j in range(Y):
                    L[i, j] = (sum(S[i][k] for k in range(Y) if k != i) if i == j else -S[i][j]) + mp.mpf(1) / Y
                rhs[i] = sum(a[i] * b[j] * t[i][j] - a[j] * b[i] * t[j][i] for j in range(Y))
            f = mp.lu_solve(L, rhs)
            mean = sum(f) / Y
            out[x] = [float(v - mean) for v in f]
    return out


def _problem(seed=0, contexts=3, actions=5):
    return make_preference("raters", contexts=contexts, actions=actions, raters=3, seed=seed)


def _algo(name, problem, **cfg):
    cls = ALGORITHMS[name]
    return cls(build_config(cls.Config, cfg, "test"), problem, np.random.default_rng(0))


def _logits(kind, X, Y, rng):
    if kind == "random":
        return rng.normal(size=(X, Y)) * 1.5
    spread = {"near-deterministic": 12.0, "underflowing": 200.0, "far": 600.0}[kind]
    return -spread * rng.permuted(np.tile(np.arange(Y, dtype=float), (X, 1)), axis=1)  # probabilities to e^-2400


REGIMES = [(k, eta) for k in ("random", "near-deterministic", "underflowing", "far") for eta in (1e-6, 0.5, 1e4)]


@pytest.mark.parametrize("kind,eta", REGIMES)
@pytest.mark.parametrize("y_prime,target", [("policy", "pair"), ("uniform", "pair"), ("uniform", "self_play")])
def test_exact_step_solves_the_population_regression(kind, eta, y_prime, target):
    rng = np.random.default_rng(zlib.crc32(f"{kind}{y_prime}{target}".encode()))
    p = _problem()
    pol = TabularSoftmax(_logits(kind, p.num_contexts, p.num_actions, rng))
    algo = _algo("rebel_pref", p, mode="exact", eta=eta, y_prime=y_prime, target=target)
    log_a = np.log(p.rho)[:, None] + pol.log_probs()
    log_b = algo._log_mu(pol)
    t = eta * algo.exact_targets(pol)
    f = product_pair_regression(log_a, log_b, t)
    want = mp_reference(log_a, log_b, t)
    scale = np.max(np.abs(t))
    assert np.max(np.abs(f - want)) <= 1e-10 * scale, (kind, eta, np.max(np.abs(f - want)) / scale)
    # the update is ln pi_t + f, normalised
    new = algo.update(pol, None).policy.log_probs()
    np.testing.assert_allclose(new, TabularSoftmax(pol.log_probs() + want).log_probs(), rtol=0,
                               atol=1e-10 * max(1.0, scale) + 1e-13 * np.max(np.abs(new)))


@pytest.mark.parametrize("kind", ["random", "near-deterministic", "underflowing", "far"])
@pytest.mark.parametrize("eta", [1e-6, 0.5, 10.0, 1e4])
def test_exact_step_with_y_prime_from_pi_t_is_exact_hedge(kind, eta):
    """y' ~ pi_t: the regression's solution is f = eta·(P(y ≻ pi_t) − ½) + c (THEORY.md §E), so the step is
    Hedge's, however deterministic pi_t is (log-probabilities down to -2400: pi_t underflows to 0)."""
    rng = np.random.default_rng(3)
    p = _problem(seed=1, contexts=4, actions=6)
    for _ in range(3):
        pol = TabularSoftmax(_logits(kind, 4, 6, rng))
        a = _algo("rebel_pref", p, mode="exact", eta=eta).update(pol, None).policy.log_probs()
        b = _algo("hedge", p, eta=eta).update(pol, None).policy.log_probs()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * max(1.0, eta) + 4e-16 * np.max(np.abs(b)))


def test_context_without_weight_and_stack_members():
    """A context of probability 0 gets no step (f = 0, its policy unchanged up to normalisation); a stack of
    members gets bit for bit each member's own step."""
    p = _problem(seed=2)
    rho = np.array([0.5, 0.0, 0.5])
    q = PreferenceBandit(p.preferences, rho=rho, pi_ref=p.pi_ref)
    rng = np.random.default_rng(4)
    pol = TabularSoftmax(rng.normal(size=(3, 5)))
    log_a = np.log(rho, where=rho > 0, out=np.full(3, -np.inf))[:, None] + pol.log_probs()
    f = product_pair_regression(log_a, pol.log_probs(), q.preferences - 0.5)
    assert np.all(f[1] == 0.0) and np.all(f[[0, 2]] != 0.0)
    new = _algo("rebel_pref", q, mode="exact", eta=1.0).update(pol, None).policy.log_probs()
    np.testing.assert_allclose(new[1], pol.log_probs()[1], rtol=0, atol=1e-15)
    logits = [rng.normal(size=(3, 5)) * s for s in (1, 12, 200)]
    t = rng.normal(size=(3, 3, 5, 5))
    la = np.stack([TabularSoftmax(z).log_probs() for z in logits])
    lb = la[::-1].copy()
    stacked = product_pair_regression(la, lb, t)
    for s in range(3):
        assert np.array_equal(stacked[s], product_pair_regression(la[s], lb[s], t[s]))


@pytest.mark.parametrize("law", ["independent", "distinct"])
def test_ipo_target_pair_law_factors(law):
    """The IPO target's regression runs on the factors of its pair law: a_y·b_y' equals pair_probs off the
    diagonal (also in a context where mu is one-hot), and its solution is the mp reference's."""
    rng = np.random.default_rng(5)
    mu = rng.dirichlet(np.ones(5), size=4)
    mu[3] = np.eye(5)[2]
    la, lb = _pair_law_factors(mu, law)
    off = 1.0 - np.eye(5)
    np.testing.assert_allclose(np.exp(la)[:, :, None] * np.exp(lb)[:, None, :] * off, pair_probs(mu, law) * off,
                               rtol=1e-15, atol=0)
    t = rng.normal(size=(4, 5, 5))
    t = t - np.swapaxes(t, 1, 2)
    np.testing.assert_allclose(product_pair_regression(la, lb, t), mp_reference(la, lb, t), rtol=0, atol=1e-12)
    p = _problem(seed=6, contexts=4)
    h = mp_reference(la, lb, (2 * p.preferences - 1) / (2 * 0.5))
    want = TabularSoftmax(p.log_pi_ref + h).log_probs()
    np.testing.assert_allclose(ipo_target_log(p.log_pi_ref, p.preferences, 0.5, mu, law), want, rtol=0, atol=1e-12)
