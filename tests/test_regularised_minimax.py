"""The KL-regularised equilibrium pi*_tau (Nash-MD's limit, testbed/problems/exact.py::regularised_minimax) at small
tau, where the plain fixed-point solve fails (7/20 random 4 x 4 instances at tau = 1e-3, 20/20 at 1e-4, before the
continuation in tau). Checked against its definition, independently of the solver: the fixed point
pi = softmax(ln mu + P·pi/tau), and the equilibrium's exploitability bound expl(pi*_tau) <= tau·ln(1/min mu)
(for any pi: P(pi ≻ pi*) − ½ <= tau·(KL(pi‖mu) − KL(pi*‖mu)), maximal at a point mass)."""

import numpy as np
import pytest
from scipy.special import softmax

from testbed.problems.exact import regularised_minimax


def _instances(n, Y=4, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        A = rng.uniform(size=(Y, Y))
        P = np.triu(A, 1)
        P = P + np.tril(1 - P.T, -1)
        np.fill_diagonal(P, 0.5)
        yield P, rng.dirichlet(np.ones(Y))


@pytest.mark.parametrize("tau", [1.0, 1e-2, 1e-3, 1e-4])
def test_regularised_minimax_is_the_fixed_point_and_meets_the_exploitability_bound(tau):
    for P, mu in _instances(20):
        pi = regularised_minimax(P, mu, tau)
        assert abs(pi.sum() - 1) <= 1e-14 and np.all(pi >= 0)
        np.testing.assert_allclose(pi, softmax(np.log(mu) + P @ pi / tau), rtol=0, atol=1e-10)
        assert np.max(P @ pi) - 0.5 <= tau * np.log(1 / mu.min()) + 1e-12
