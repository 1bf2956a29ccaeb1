"""Policies: exact probabilities, sampling frequencies, differentiable log-probabilities."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from testbed.policies import LogLinear, TabularSoftmax, mean_score_features, score_features
from testbed.problems import make_linear


def policies():
    rng = np.random.default_rng(0)
    yield TabularSoftmax(rng.normal(size=(4, 5)))
    yield LogLinear(make_linear("random", 4, 5, dim=3, seed=0).features, rng.normal(size=3) * 3)


@pytest.mark.parametrize("pol", list(policies()), ids=["tabular", "loglinear"])
def test_probabilities_and_torch_log_probs_agree(pol):
    p = pol.probs()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-14)
    x = np.repeat(np.arange(4), 5)
    y = np.tile(np.arange(5), 4)
    lp = pol.torch_log_prob(torch.tensor(pol.params), x, y).numpy()
    np.testing.assert_allclose(lp, pol.log_probs()[x, y], atol=1e-12)
    np.testing.assert_allclose(pol.log_probs_at(x)[np.arange(20), y], pol.log_probs()[x, y])


@pytest.mark.parametrize("pol", list(policies()), ids=["tabular", "loglinear"])
def test_torch_gradient_is_the_score(pol):
    """∇_theta ln pi(y|x) = psi(x, y) - E_pi psi(x, .) (closed form for exponential families)."""
    x, y = np.array([2]), np.array([3])
    theta = torch.tensor(pol.params, requires_grad=True)
    pol.torch_log_prob(theta, x, y).sum().backward()
    expected = score_features(pol, x, y)[0] - mean_score_features(pol, x)[0]
    grad = theta.grad.numpy()
    if isinstance(pol, TabularSoftmax):
        np.testing.assert_allclose(grad[2], expected, atol=1e-12)
        assert np.all(np.delete(grad, 2, axis=0) == 0)
    else:
        np.testing.assert_allclose(grad, expected, atol=1e-12)


@pytest.mark.parametrize("pol", list(policies()), ids=["tabular", "loglinear"])
def test_sampling_matches_probabilities(pol):
    """Chi-square goodness of fit per context at the 0.001 level (Bonferroni over 4 contexts)."""
    rng = np.random.default_rng(1)
    n = 20000
    for x in range(4):
        y = pol.sample(rng, np.full(n, x))
        counts = np.bincount(y, minlength=5)
        expected = n * pol.probs()[x]
        keep = expected > 5
        f_obs = np.append(counts[keep], counts[~keep].sum())
        f_exp = np.append(expected[keep], expected[~keep].sum())
        assert chisquare(f_obs[f_exp > 0], f_exp[f_exp > 0]).pvalue > 1e-3 / 4


def test_near_deterministic_policy_samples_its_mode_and_stays_finite():
    pol = TabularSoftmax(np.array([[0.0, 800.0, -800.0]]))
    assert np.all(np.isfinite(pol.log_probs()))
    assert np.all(pol.sample(np.random.default_rng(0), np.zeros(1000, dtype=int)) == 1)
