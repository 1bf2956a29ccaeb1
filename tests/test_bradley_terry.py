"""The Bradley–Terry maximum-likelihood fit (``problems.exact.bradley_terry_fit``): batched Newton with the
minimum-norm step. Checked against Newton's method in mpmath at 40 digits (the MLE to ~1e-30), label symmetry,
the sets of responses that comparisons do not connect, batch invariance and one-response problems."""

import mpmath as mp
import numpy as np
import pytest

from testbed.problems import bradley_terry_fit, make_preference


@mp.workdps(40)
def mp_fit(P, W, l2=0.0):
    """The maximiser at 40 digits: Newton in mpmath on the full reward vector (l2 > 0: the Hessian is positive
    definite) or with r_0 = 0 (l2 = 0, comparisons connected), centred to mean 0."""
    Y = P.shape[0]
    Ws = W + W.T
    gauge = l2 == 0
    r = [mp.mpf(0)] * Y
    for _ in range(100):
        g = [mp.mpf(0)] * Y
        H = mp.zeros(Y, Y)
        for i in range(Y):
            for j in range(Y):
                if Ws[i, j] == 0:
                    continue
                s = 1 / (1 + mp.exp(r[j] - r[i]))
                g[i] -= mp.mpf(Ws[i, j]) * (mp.mpf(P[i, j]) - s)
                h = mp.mpf(Ws[i, j]) * s * (1 - s)
                H[i, j] -= h
                H[i, i] += h
            g[i] += 2 * mp.mpf(l2) * r[i]
            H[i, i] += 2 * mp.mpf(l2)
        k = 1 if gauge else 0
        step = mp.lu_solve(H[k:, k:], -mp.matrix(g[k:]))
        r = r[:k] + [r[k + n] + step[n] for n in range(Y - k)]
        if mp.norm(step) < mp.mpf(10) ** -32:
            break
    m = sum(r) / Y
    return np.array([float(v - m) for v in r])


def random_P(rng, Y, lo=0.05, hi=0.95):
    P = np.triu(rng.uniform(lo, hi, (Y, Y)), 1)
    P = P + np.tril(1 - P.T, -1)
    np.fill_diagonal(P, 0.5)
    return P


@pytest.mark.parametrize("l2", [0.0, 1e-4, 0.3])
@pytest.mark.parametrize("weights", ["uniform", "peaked", "sampled"])
def test_the_fit_is_the_mle_to_rounding(l2, weights):
    rng = np.random.default_rng(7)
    for _ in range(3):
        Y = int(rng.integers(2, 7))
        P = random_P(rng, Y)
        if weights == "uniform":
            W = np.full((Y, Y), 1.0 / Y**2)
        elif weights == "peaked":  # pi_ref ⊗ pi_ref with responses of probability down to ~1e-9
            pi = np.exp(rng.normal(size=Y) * 6)
            pi /= pi.sum()
            W = np.outer(pi, pi)
        else:  # counts of a small data set, every pair compared at least once
            W = (rng.integers(1, 6, (Y, Y)) + 0.0) / 100
        got = bradley_terry_fit(P, pair_weights=W, l2=l2)
        want = mp_fit(P, W, l2)
        assert np.max(np.abs(got - want)) <= 1e-10 * max(1.0, np.max(np.abs(want)))


def test_the_fit_does_not_depend_on_how_responses_are_numbered():
    """Relabel the responses: the rewards are relabelled (with a ridge too: the ridge is on the whole vector, the
    old gauge r_0 = 0 left response 0 unpenalised and moved the others by ~1 on unanimous data)."""
    rng = np.random.default_rng(3)
    P = np.array([[0.5, 1.0, 1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.5]])  # unanimous ranking 0 > 1 > 2
    W = np.full((3, 3), 1 / 9)
    for l2 in (1e-4, 1e-2):
        base = bradley_terry_fit(P, pair_weights=W, l2=l2)
        for perm in ([1, 0, 2], [2, 1, 0], [1, 2, 0]):
            q = np.array(perm)
            again = bradley_terry_fit(P[np.ix_(q, q)], pair_weights=W, l2=l2)
            np.testing.assert_allclose(again, base[q], atol=1e-11)
    for _ in range(5):
        Y = 5
        P, W, q = random_P(rng, Y), rng.uniform(0.01, 1.0, (Y, Y)), rng.permutation(Y)
        for l2 in (0.0, 1e-3):
            np.testing.assert_allclose(bradley_terry_fit(P[np.ix_(q, q)], W[np.ix_(q, q)], l2=l2),
                                       bradley_terry_fit(P, W, l2=l2)[q], atol=1e-11)


def test_sets_the_comparisons_do_not_connect_keep_their_starting_mean():
    """With l2 = 0 the rewards of responses in different connected sets are not identified. Within a set they are
    that set's own MLE; each set's mean stays the starting point's (the minimum-norm Newton step)."""
    rng = np.random.default_rng(5)
    Y = 7
    P = random_P(rng, Y)
    W = rng.uniform(0.1, 1.0, (Y, Y))
    sets = [[0, 1, 2], [3, 4, 5], [6]]
    mask = np.zeros((Y, Y), dtype=bool)
    for s in sets:
        mask[np.ix_(s, s)] = True
    W = np.where(mask, W, 0.0)
    x0 = rng.normal(size=Y) * 3
    got = bradley_terry_fit(P, pair_weights=W, x0=x0)
    shift = x0.mean()
    for s in sets:
        assert abs(got[s].mean() - (x0[s].mean() - shift)) <= 1e-12
        if len(s) > 1:
            own = mp_fit(P[np.ix_(s, s)], W[np.ix_(s, s)])
            np.testing.assert_allclose(got[s] - got[s].mean(), own, atol=1e-11)


def test_unanimous_data_without_a_ridge_stops_where_the_gradient_is_below_gtol():
    """No finite MLE: the gap grows until w·σ(−gap) < gtol, i.e. gap > ln(w/gtol), and the fit stops (finite)."""
    P = np.array([[0.5, 1.0], [0.0, 0.5]])
    W = np.full((2, 2), 0.25)
    r = bradley_terry_fit(P, pair_weights=W, gtol=1e-12)
    gap = r[0] - r[1]
    assert np.isfinite(gap) and np.log(0.5 / 1e-12) - 1 <= gap <= 60


def test_two_responses_with_a_ridge_solve_the_stationarity_equation():
    """Y = 2: the gap δ solves Ws·(p − σ(δ)) = l2·δ (r = ±δ/2, ridge l2·δ²/2), found by mpmath's findroot."""
    for p, w, l2 in [(0.8, 0.5, 0.0), (0.99, 0.01, 1e-3), (1.0, 1.0, 0.1), (0.3, 2.0, 5.0)]:
        P = np.array([[0.5, p], [1 - p, 0.5]])
        W = np.array([[0.0, w], [0.0, 0.0]])
        if l2 == 0:
            want = mp.log(p / (1 - p))
        else:
            with mp.workdps(40):
                want = mp.findroot(lambda d, w=w, p=p, l2=l2: w * (p - 1 / (1 + mp.exp(-d))) - l2 * d, 1.0)
        r = bradley_terry_fit(P, pair_weights=W, l2=l2)
        assert abs((r[0] - r[1]) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))


def test_each_context_is_fitted_as_if_alone_bit_for_bit():
    p = make_preference("raters", contexts=12, actions=6, raters=3, seed=4)
    W = p.pi_ref[:, :, None] * p.pi_ref[:, None, :]
    for l2 in (0.0, 1e-4):
        together = bradley_terry_fit(p.preferences, pair_weights=W, l2=l2)
        alone = np.stack([bradley_terry_fit(p.preferences[x], pair_weights=W[x], l2=l2) for x in range(12)])
        assert np.array_equal(together, alone)
        reordered = bradley_terry_fit(p.preferences[::-1], pair_weights=W[::-1], l2=l2)
        assert np.array_equal(reordered, together[::-1])


def test_one_response_has_reward_zero_and_a_one_action_preference_run_works():
    assert np.array_equal(bradley_terry_fit(np.full((3, 1, 1), 0.5)), np.zeros((3, 1)))
    from testbed.experiments.theory import problem_theory
    p = make_preference("skew", contexts=2, actions=1, seed=0)
    theory = problem_theory(p)
    assert np.array_equal(np.asarray(theory["bt_rewards"]), np.zeros((2, 1)))
