"""SPPO's exact step (``sppo_population``) against an independent high-precision solution of its problem.

Per context, min over log-probabilities l of sum_y pi(y)·(l_y − ln pi(y) − shift_y)², shift = eta·(P(y ≻ pi) − ½).
The reference solves the problem's own first-order (KKT) system, 2·pi_y·(l_y − a_y) + lam·e^{l_y} = 0 and
sum_y e^{l_y} = 1 (a = ln pi + shift), at 60 digits by nested scalar root solves — no Lambert W. It searches lam > 0
only (lam = e^nu), so the point it finds is the KKT point of the convex problem on {sum e^l <= 1}: its minimiser.
Regimes: benign, tiny eta, huge eta (shift in the thousands: e^shift overflows float64), near-deterministic pi
(1 − 1e-12, entries down to 1e-300). Two-response vertices (1 − pi_0 down to 1e-300) are checked against a 1-d
reference: the stationary point of the objective in ln pi(y_1), by bisection at 400 digits.
"""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import log_softmax

from testbed.algorithms.preference import sppo_population
from testbed.policies import TabularSoftmax, stack
from testbed.problems import make_preference
from tests.conftest import make_algo


def kkt_reference(log_pi: np.ndarray, shift: np.ndarray, digits: int = 60):
    """l, lam and the minimum from the KKT system at ``digits`` digits, by nested scalar root solves: for a given
    lam > 0 each l_y = a_y − u_y with u_y > 0 the root of ln(2·pi_y·u) = ln lam + a_y − u (the y-th equation
    rearranged; Newton from above, where it converges monotonically), then ln lam by bisection on
    sum_y e^{l_y} = 1 (decreasing in lam). pi is e^log_pi normalised in mpmath."""
    with mp.workdps(digits):
        lp = [mp.mpf(float(v)) for v in log_pi]
        z = mp.log(mp.fsum(mp.e**v for v in lp))
        lp = [v - z for v in lp]
        a = [v + mp.mpf(float(s)) for v, s in zip(lp, shift)]

        def u_of(nu, y):  # u + ln u = nu + a_y − ln 2 − lp_y =: t, the root u > 0
            t = nu + a[y] - mp.log(2) - lp[y]
            u = t if t > 1 else mp.e**t  # above the root: u >= omega(t)
            for _ in range(400):
                new = u - (u + mp.log(u) - t) / (1 + 1 / u)
                if abs(new - u) <= mp.mpf(10) ** (-digits + 5) * abs(u):
                    return new
                u = new
            raise AssertionError("inner Newton did not converge")

        def excess(nu):
            return mp.fsum(mp.e ** (a[y] - u_of(nu, y)) for y in range(len(a))) - 1

        lo, hi = mp.mpf(-2000), mp.mpf(60)
        assert excess(lo) > 0 > excess(hi)
        while hi - lo > mp.mpf(10) ** (-digits + 5):  # bisection: excess decreases in nu
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
        nu = (lo + hi) / 2
        u = [u_of(nu, y) for y in range(len(a))]
        lam, pi = mp.e**nu, [mp.e**v for v in lp]
        kkt = max(abs(2 * pi[y] * u[y] / (lam * mp.e ** (a[y] - u[y])) - 1) for y in range(len(a)))
        assert kkt < mp.mpf(10) ** (-digits + 15)  # 2·pi_y·u_y = lam·e^{l_y}, relative (l_y − a_y = −u_y would cancel)
        l = [a[y] - u[y] for y in range(len(a))]
        loss = mp.fsum(pi[y] * u[y] ** 2 for y in range(len(a)))
        return np.array([float(v) for v in l]), float(lam), float(loss)


def win_shift(rng, Y: int, log_pi: np.ndarray, eta: float) -> np.ndarray:
    """eta·(P(y ≻ pi) − ½) for a random skew-symmetric P (P + Pᵀ = 1)."""
    U = np.triu(rng.uniform(size=(Y, Y)), 1)
    P = U + np.tril(1 - U.T, -1) + 0.5 * np.eye(Y)
    return eta * (P @ np.exp(log_pi) - 0.5)


def cases():
    rng = np.random.default_rng(7)
    out = []
    for eta in (1e-6, 0.5, 5.0, 1e4):  # tiny, benign, large, huge (shift ~ 1e3: e^shift overflows)
        out.append((f"random eta={eta:g}", log_softmax(rng.normal(size=6) * 2), eta))
    out.append(("near-deterministic eta=1", np.log(np.array([1 - 2e-12, 1e-12, 1e-12])), 1.0))
    out.append(("near-deterministic eta=1e3", np.log(np.array([1 - 2e-12, 1e-12, 1e-12])), 1e3))
    out.append(("tiny entries eta=10", log_softmax(np.array([0.0, -5.0, -200.0, -690.0])), 10.0))
    out.append(("underflowing pi eta=50", np.array([0.0, -3.0, -800.0]) - np.logaddexp(0.0, -3.0), 50.0))
    return out, rng


CASES, _RNG = cases()


@pytest.mark.parametrize("label,log_pi,eta", CASES, ids=[c[0] for c in CASES])
def test_sppo_exact_step_equals_the_high_precision_kkt_solution(label, log_pi, eta):
    shift = win_shift(np.random.default_rng(len(label)), len(log_pi), log_pi, eta)
    assert abs(np.exp(log_pi) @ shift) <= 1e-9 * max(1.0, eta)  # E_pi[shift] = 0: the step's premise
    l, loss = sppo_population(log_pi, shift)
    finite = np.isfinite(log_pi) & (log_pi > -700)  # mpmath's reference keeps e^l_y; pi = 0 entries are not in it
    ref, _, ref_loss = kkt_reference(log_pi[finite], shift[finite])
    np.testing.assert_allclose(l[finite], ref, rtol=1e-10, atol=1e-10)
    # mu (hence the loss) is fixed by psi = sum pi·expm1(x), whose terms (~|shift|) round at eps·sum pi|shift| against
    # its size d = sum pi·expm1(shift): a relative floor of eps·sum pi|shift|/d (~1e-9 at eta = 1e-6), stated a priori
    pi = np.exp(log_pi)
    floor = 8 * np.finfo(float).eps * (pi @ np.abs(shift)) / (pi @ np.expm1(np.minimum(shift, 700)))
    assert abs(loss - ref_loss) <= (1e-10 + floor) * max(ref_loss, 1e-300) + 1e-300
    assert abs(np.exp(l).sum() - 1) <= 1e-13


@pytest.mark.parametrize("log_pi,shift", [
    (np.array([-1006.6, -3322.3, 0.0]), np.array([750.0, -750.0, 0.0])),  # rps at eta = 1500, reached at iteration 11
    (np.array([-900.0, -20.0, 0.0]), np.array([2000.0, -3000.0, 10.0])),
], ids=["rps-eta1500", "three-scales"])
def test_sppo_exact_step_counts_responses_whose_probability_underflows(log_pi, shift):
    """pi_0 = e^-1006.6 underflows to 0 but pi_0·e^x_0 = e^-500.5 does not: the root's equation must count it (it
    raised 'did not settle' before: psi summed pi·expm1(x) with pi = 0 while the bracket counted it). Against the
    KKT system at 400 digits (the terms decide at ~e^-500 against 1), every entry compared."""
    log_pi = log_pi - np.logaddexp.reduce(log_pi)
    shift = shift - np.exp(log_pi) @ shift  # E_pi[shift] = 0 as for a win-rate shift
    l, _ = sppo_population(log_pi, shift)
    ref, _, _ = kkt_reference(log_pi, shift, digits=400)
    np.testing.assert_allclose(l, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("eta", [1500.0, 3000.0, 1e4, 1e6])
def test_sppo_exact_runs_at_huge_eta_from_a_skewed_reference(eta):
    """rps from pi_ref = (0.6, 0.3, 0.1): at eta >= 1500 responses underflow within a few steps (before: a
    RuntimeError at iteration 11, 13, 1 and 1). Each of 40 steps stays finite and normalised."""
    p = make_preference("rps", pi_ref=[0.6, 0.3, 0.1])
    algo, policy = make_algo("sppo", p, eta=eta), TabularSoftmax(p.log_pi_ref)
    for _ in range(40):
        policy = algo.update(policy, None).policy
        lp = policy.log_probs()
        assert np.all(lp <= 0) and not np.any(np.isnan(lp))
        assert abs(np.exp(lp).sum() - 1) <= 1e-13


def two_response_reference(log_pi: np.ndarray, shift: np.ndarray, digits: int = 400) -> np.ndarray:
    """(ln(1 − q), ln q) for q the minimiser of pi_0·(ln(1 − q) − a_0)² + pi_1·(ln q − a_1)² over q in (0, 1): the
    root in t = ln q of the derivative's sign, g(t) = pi_1(t − a_1) − pi_0·(ln(1 − q) − a_0)·q/(1 − q), by
    bisection (g < 0 as q -> 0, g > 0 at q = 1/2 on these instances: asserted)."""
    with mp.workdps(digits):
        lp = [mp.mpf(float(v)) for v in log_pi]
        z = mp.log(mp.fsum(mp.e**v for v in lp))
        pi = [mp.e ** (v - z) for v in lp]
        a = [v - z + mp.mpf(float(s)) for v, s in zip(lp, shift)]

        def g(t):
            q = mp.e**t
            return pi[1] * (t - a[1]) - pi[0] * (mp.log1p(-q) - a[0]) * q / (1 - q)

        lo, hi = mp.mpf(-2000), mp.log(mp.mpf(0.5))
        assert g(lo) < 0 < g(hi)
        while hi - lo > mp.mpf(10) ** (-60):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if g(mid) > 0 else (mid, hi)
        t = (lo + hi) / 2
        return np.array([float(mp.log1p(-mp.e**t)), float(t)])


def test_sppo_exact_step_at_a_vertex_whose_expected_shift_rounds_below_zero_is_finite_and_normalised():
    P = np.array([[0.5, 0.1], [0.9, 0.5]])
    cases = [(1e-200, eta) for eta in (1e-12, 1.0, 10.0)]  # E_pi[shift] rounds to 0 or below (was 0/0: NaN)
    cases += [(1e-60, 1e3), (1e-100, 1e6), (1e-300, 1e6)]  # the root 70-350 e-folds below its upper bound (raised)
    for e, eta in cases:
        log_pi = np.array([np.log1p(-e), np.log(e)])
        shift = eta * (P @ np.exp(log_pi) - 0.5)
        l, loss = sppo_population(log_pi, shift)
        assert np.all(np.isfinite(l)) and abs(np.exp(l).sum() - 1) <= 1e-15 and loss >= 0
        np.testing.assert_allclose(l, two_response_reference(log_pi, shift), rtol=1e-10, atol=1e-300)
    p = make_preference("raters", contexts=4, actions=5, raters=3, seed=0)
    for eta in (10.0, 100.0):  # long runs drive pi to a vertex (this made NaN at step 22 / 4 before the fix)
        algo, pol = make_algo("sppo", p, eta=eta), TabularSoftmax(np.zeros((4, 5)))
        for _ in range(40):
            pol = algo.update(pol, None).policy
            assert np.all(np.isfinite(pol.log_probs())) and np.allclose(np.exp(pol.log_probs()).sum(-1), 1, atol=1e-14)


def test_sppo_exact_step_is_no_worse_than_bfgs_and_moves_nothing_at_eta_zero():
    rng = np.random.default_rng(3)
    for _ in range(5):
        log_pi = log_softmax(rng.normal(size=5))
        shift = win_shift(rng, 5, log_pi, 2.0)
        l, loss = sppo_population(log_pi, shift)
        pi, a = np.exp(log_pi), log_pi + shift

        def f(theta, pi=pi, a=a):
            return float(pi @ (log_softmax(theta) - a) ** 2)

        res = minimize(f, a, method="BFGS", options={"gtol": 1e-12})
        assert loss <= res.fun * (1 + 1e-9)
        np.testing.assert_allclose(l, log_softmax(res.x), atol=1e-5)
    l, loss = sppo_population(log_pi, np.zeros(5))
    assert np.array_equal(l, log_pi) and loss == 0.0


def test_sppo_exact_stack_is_member_for_member_identical():
    p = make_preference("raters", contexts=4, actions=5, raters=3, seed=0)
    rng = np.random.default_rng(0)
    pols = [TabularSoftmax(rng.normal(size=(4, 5)) * s) for s in (0.1, 1.0, 10.0)]
    shifts = [3.0 * (p.win_rates(q.probs()) - 0.5) for q in pols]
    one = [sppo_population(q.log_probs(), s) for q, s in zip(pols, shifts)]
    l, loss = sppo_population(stack(pols).log_probs(), np.stack(shifts))
    for i, (li, lossi) in enumerate(one):
        assert np.array_equal(l[i], li) and np.array_equal(loss[i], lossi)
    step = make_algo("sppo", p, eta=3.0).update(pols[1], None)
    assert np.array_equal(step.policy.log_probs(), log_softmax(one[1][0], axis=-1))
    assert step.loss == pytest.approx(p.expect(one[1][1]), rel=1e-15)
