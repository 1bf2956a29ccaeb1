"""Policies: exact probabilities, sampling frequencies, differentiable log-probabilities."""

import numpy as np
import pytest
import torch
from scipy.special import log_softmax as scipy_log_softmax
from scipy.stats import chisquare

from testbed.policies import LogLinear, TabularSoftmax, log_softmax, mean_score_features, score_features
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


@pytest.mark.parametrize("shape", [(7, 2), (7, 10), (1, 33), (5, 64), (4, 3, 65), (3, 1000)])
def test_log_softmax_equals_scipy_and_gives_each_member_of_a_stack_its_own_bits(shape):
    """testbed.policies.log_softmax (short last axes reduced as the leading axis of a transposed copy) agrees with
    scipy to rounding, and a stack of 50 members gives each member exactly what it gets alone: the batched runner's
    bit-for-bit equality rests on it (X = 1 and 8 < Y <= 64 are where numpy would sum a lone row pairwise)."""
    rng = np.random.default_rng(0)
    z = rng.normal(scale=30.0, size=(50, *shape))
    out = log_softmax(z)
    np.testing.assert_allclose(out, scipy_log_softmax(z, axis=-1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.exp(out).sum(-1), 1.0, rtol=0, atol=1e-12)
    for s in range(len(z)):
        assert np.array_equal(out[s], log_softmax(z[s]))


def test_log_softmax_keeps_minus_infinity_and_huge_logits_like_scipy():
    z = np.array([[0.0, -np.inf, 1.0], [1e308, 1e308, -1e308], [-np.inf, 0.0, -np.inf]])
    out = log_softmax(z)
    np.testing.assert_allclose(out, scipy_log_softmax(z, axis=-1), rtol=0, atol=1e-15)  # infinities must match exactly
    assert out[0, 1] == -np.inf and out[2, 1] == 0.0 and out[1, 0] == pytest.approx(-np.log(2), abs=1e-15)
