"""SFT on the bandit track: the demonstration law, the exact and Adam solvers of the population cross-entropy, and a
sampled step against a hand computation of the cross-entropy gradient of its batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import yaml

from testbed.algorithms import SFT, build_config
from testbed.algorithms.sft import demonstration_probs
from testbed.cli import main
from testbed.errors import InputError
from testbed.experiments import read_metrics
from testbed.experiments.spec import parse_spec
from testbed.policies import LogLinear, TabularSoftmax
from testbed.problems import TabularBandit, make_linear
from tests.conftest import make_algo

# two contexts; context 0 has a tie at the top (actions 1 and 2) and one between actions 0 and 3
REWARDS = np.array([[0.2, 0.7, 0.7, 0.2], [0.9, 0.1, 0.5, 0.3]])
PI_REF = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.4, 0.1]])


def problem() -> TabularBandit:
    return TabularBandit(REWARDS, rho=np.array([0.3, 0.7]), pi_ref=PI_REF)


def best_of_n_by_enumeration(p: TabularBandit, n: int) -> np.ndarray:
    """The law of the first best (np.argmax) of n i.i.d. pi_ref samples, by summing over all Y^n tuples."""
    X, Y = p.rewards.shape
    d = np.zeros((X, Y))
    for x in range(X):
        for tup in itertools.product(range(Y), repeat=n):
            d[x, tup[int(np.argmax(p.rewards[x, list(tup)]))]] += np.prod(p.pi_ref[x, list(tup)])
    return d


@pytest.mark.parametrize("n", [1, 2, 3])
def test_population_sft_exact_solver_is_the_best_of_n_law(n):
    """One exact step sets pi to d, the best-of-n law (enumerated independently, ties to the first sample), and
    its loss is then the cross-entropy's minimum, the rho-mean entropy of d. n = 1: d = pi_ref."""
    p = problem()
    d = best_of_n_by_enumeration(p, n)
    np.testing.assert_allclose(demonstration_probs(p, "best_of_n", n), d, rtol=0, atol=1e-14)
    if n == 1:
        np.testing.assert_allclose(d, PI_REF, rtol=0, atol=1e-15)
    step = make_algo("sft", p, mode="population", demonstrator="best_of_n", n=n, solver="exact").update(
        TabularSoftmax(np.zeros((2, 4))), None)
    np.testing.assert_allclose(step.policy.probs(), d, rtol=0, atol=1e-14)
    assert step.loss == pytest.approx(float(-(p.rho[:, None] * d * np.log(d)).sum()), rel=1e-13)


@pytest.mark.parametrize("demonstrator, tol", [("optimal", 1e-3), ("best_of_n", 1e-12)])
def test_population_sft_with_adam_converges_to_the_demonstrations(demonstrator, tol):
    """Full-batch Adam on the exact cross-entropy, from pi_ref: pi -> d. best_of_n (n = 2): d has full support, the
    loss a strict minimiser in the logits (up to a shift), reached to rounding. optimal: d is the argmax with the tie
    at context 0 shared equally, a point mass the logits only approach (the gradient rho·(pi - d) decays with
    1 - pi(argmax)), so 1e-3 after 1200 Adam steps."""
    p = problem()
    d = p.optimal_policy() if demonstrator == "optimal" else best_of_n_by_enumeration(p, 2)
    algo = make_algo("sft", p, mode="population", demonstrator=demonstrator, n=2, lr=0.05, epochs=4)
    pol = TabularSoftmax(np.log(PI_REF))
    start = np.abs(pol.probs() - d).max()
    for _ in range(300):
        pol = algo.update(pol, np.random.default_rng(0)).policy
    assert start > 0.15 and np.abs(pol.probs() - d).max() < tol


class _SGD(torch.optim.SGD):
    def __init__(self, params, lr):
        super().__init__(params, lr=lr)


@pytest.mark.parametrize("kind", ["tabular", "loglinear"])
@pytest.mark.parametrize("demonstrator", ["optimal", "best_of_n"])
def test_a_sampled_sft_step_is_the_cross_entropy_gradient_of_its_batch(kind, demonstrator, monkeypatch):
    """One epoch of full-batch plain gradient descent (Adam swapped for SGD): theta - lr·grad of
    -(1/N)·sum_i ln pi(y_i|x_i) with grad = -(1/N)·sum_i (phi(x_i, y_i) - E_{pi(.|x_i)} phi) (tabular: phi = e_(x,y)),
    computed here from the drawn batch; the batch's demonstrations are the demonstrator's."""
    N, n, lr = 40, 3, 0.3
    if kind == "tabular":
        p = problem()
        phi = np.eye(8).reshape(2, 4, 8)  # the tabular parameters as features
        policy = TabularSoftmax(np.random.default_rng(0).normal(size=(2, 4)))
    else:
        p = make_linear("random", contexts=3, actions=4, dim=3, seed=1)
        phi = p.features
        policy = LogLinear(phi, np.random.default_rng(0).normal(size=3))
    algo = make_algo("sft", p, demonstrator=demonstrator, n=n, demonstrations=N, minibatch=N, lr=lr)
    seen = {}
    real = SFT.demonstrations

    def spy(self, rng):
        seen["batch"] = real(self, rng)
        return seen["batch"]

    monkeypatch.setattr(SFT, "demonstrations", spy)
    monkeypatch.setattr(torch.optim, "Adam", _SGD)
    step = algo.update(policy, np.random.default_rng(5))
    x, y, samples, queries = seen["batch"]
    pi = policy.probs()
    grad = -np.mean([phi[a, b] - pi[a] @ phi[a] for a, b in zip(x, y)], axis=0)
    if kind == "tabular":
        expected = TabularSoftmax(policy.params - lr * grad.reshape(2, 4)).log_probs()
    else:
        expected = LogLinear(phi, policy.params - lr * grad).log_probs()
    np.testing.assert_allclose(step.policy.log_probs(), expected, rtol=0, atol=1e-10)
    assert step.loss == pytest.approx(-np.mean(step.policy.log_probs()[x, y]), rel=1e-12)
    best = p.rewards[x, y] == p.rewards[x].max(axis=1)
    if demonstrator == "optimal":
        assert best.all() and (samples, queries) == (N, 0)
    else:
        assert best.mean() > 0.5 and (samples, queries) == (N * n, N * n)


def test_sampled_best_of_n_demonstrations_follow_their_closed_form():
    p = problem()
    algo = make_algo("sft", p, demonstrator="best_of_n", n=3, demonstrations=40_000)
    x, y, _, _ = algo.demonstrations(np.random.default_rng(2))
    d = demonstration_probs(p, "best_of_n", 3)
    for c in range(2):
        freq = np.bincount(y[x == c], minlength=4) / np.sum(x == c)
        sd = np.sqrt(d[c] * (1 - d[c]) / np.sum(x == c))
        assert np.all(np.abs(freq - d[c]) < 4 * sd + 1e-12), (c, freq, d[c])  # 4 sd


def test_sft_runs_from_a_bandit_spec_and_counts_its_demonstrations(tmp_path):
    spec = {"name": "sft", "problems": [{"kind": "tabular", "family": "random", "contexts": 3, "actions": 4, "seed": 0}],
            "algorithms": [{"name": "sft", "demonstrations": 20, "lr": 0.1},
                           {"name": "sft", "demonstrator": "best_of_n", "n": 2, "demonstrations": 20, "label": "bon"},
                           {"name": "sft", "mode": "population", "demonstrator": "best_of_n", "solver": "exact"}],
            "seeds": 2, "iterations": 3}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    rows = {(r["algorithm"], r["seed"], r["iteration"]): r for r in read_metrics(tmp_path / "o")}
    assert (rows[("sft-sampled", 1, 3)]["samples"], rows[("sft-sampled", 1, 3)]["queries"]) == (60, 0)
    assert (rows[("bon", 0, 2)]["samples"], rows[("bon", 0, 2)]["queries"]) == (80, 80)
    assert rows[("sft-population", 0, 3)]["samples"] is None
    assert rows[("sft-sampled", 0, 3)]["suboptimality"] < rows[("sft-sampled", 0, 0)]["suboptimality"]


@pytest.mark.parametrize("params, message", [
    ({"solver": "exact"}, "algorithms[0].solver: exact minimises the population cross-entropy (mode: population)"),
    ({"solver": "exact", "mode": "population"}, "algorithms[0].solver: exact with demonstrator: optimal has no finite"),
    ({"dataset": "x.jsonl"}, "algorithms[0].dataset applies to lm runs only"),
    ({"demonstrator": "expert"}, "algorithms[0].demonstrator must be one of optimal, best_of_n"),
])
def test_bad_bandit_sft_settings_are_one_line_errors_naming_the_field(params, message):
    spec = {"problems": [{"kind": "tabular", "family": "random", "contexts": 2, "actions": 3, "seed": 0}],
            "algorithms": [{"name": "sft", **params}], "iterations": 1}
    with pytest.raises(InputError) as e:
        parse_spec(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_lm_sft_still_needs_its_dataset():
    cfg = build_config(SFT.Config, {}, "algorithms[0] (sft)", "lm")
    assert SFT.check_track(cfg, "lm") == "SFT on an LM needs a JSONL file with prompt, completion (dataset)"
    assert SFT.check_track(cfg, "bandit") is None
