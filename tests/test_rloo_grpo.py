"""RLOO and GRPO: their advantages by hand, and on a bandit batch against an independent computation."""

import numpy as np
import pytest
import torch

from testbed.algorithms import GRPO, RLOO, build_config
from testbed.losses import group_normalised_advantage, leave_one_out_advantage
from testbed.policies import TabularSoftmax
from testbed.problems import make_tabular


def test_group_normalised_advantage_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0], [0.0, 4.0, 1.0]], dtype=torch.float64)
    # row 0: mean 0.5, unbiased std sqrt((0.25 + 0.25 + 0)/2) = 0.5; row 1: no spread; row 2: mean 5/3,
    # unbiased std sqrt(((5/3)² + (7/3)² + (2/3)²)/2) = sqrt(13/3)
    s2 = np.sqrt(13 / 3)
    want = [[0.5 / 0.5001, -0.5 / 0.5001, 0.0], [0.0, 0.0, 0.0],
            [(-5 / 3) / (s2 + 1e-4), (7 / 3) / (s2 + 1e-4), (-2 / 3) / (s2 + 1e-4)]]
    assert torch.allclose(group_normalised_advantage(r), torch.tensor(want, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(group_normalised_advantage(r, scale=False), r - r.mean(1, keepdim=True), atol=1e-15)
    with pytest.raises(ValueError, match=r"shape \[N, k\]"):
        group_normalised_advantage(torch.ones(4))


@pytest.mark.parametrize("cls", [RLOO, GRPO], ids=["rloo", "grpo"])
def test_rloo_and_grpo_advantages_on_a_bandit_batch(cls, monkeypatch):
    """One epoch (the ratio is 1, nothing is clipped) of full-batch plain gradient descent: the step must be
    -lr·grad of -mean(A·ln pi(y|x)) with A each method's advantage of its own k responses, computed here
    independently from the drawn batch."""
    problem = make_tabular("random", contexts=3, actions=4, seed=2)
    policy = TabularSoftmax(np.random.default_rng(0).normal(size=(3, 4)))
    cfg = build_config(cls.Config, {"k": 4, "contexts": 5, "minibatch": 20, "lr": 0.1}, "a", "bandit")
    seen = {}
    real = RLOO._draw

    def spy(self, pol, rng, p):
        out = real(self, pol, rng, p)
        seen["x"], seen["y"], _, seen["r"] = out
        return out

    monkeypatch.setattr(RLOO, "_draw", spy)
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr: torch.optim.SGD(params, lr=lr))
    rng = np.random.default_rng(1)
    step = cls(cfg, problem, rng).update(policy, rng)
    x, y, r = seen["x"], seen["y"], seen["r"].reshape(5, 4)
    assert np.all(x.reshape(5, 4) == x.reshape(5, 4)[:, :1])  # k responses to each context
    if cls is RLOO:
        adv = r - (r.sum(1, keepdims=True) - r) / 3
    else:
        adv = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    grad = np.zeros((3, 4))
    pi = policy.probs()
    for xi, yi, a in zip(x, y, adv.ravel()):  # d/dtheta of -A·ln pi(y|x), averaged over the batch
        g = -pi[xi].copy()
        g[yi] += 1
        grad[xi] -= a * g / len(x)
    want = policy.log_probs() - 0.1 * grad
    got = step.policy.params
    norm = lambda t: t - np.logaddexp.reduce(t, axis=1, keepdims=True)  # noqa: E731
    assert np.abs(norm(got) - norm(want)).max() < 1e-12
    assert step.samples == step.queries == 20
    assert torch.allclose(leave_one_out_advantage(torch.as_tensor(r)), torch.as_tensor(r - (r.sum(1, keepdims=True) - r) / 3))


def test_grpo_runs_from_a_bandit_spec_and_an_lm_spec(tmp_path):
    """Added as one file and one registry line, GRPO runs through both tracks' specs and run folders."""
    pytest.importorskip("transformers")
    import yaml
    from llm_helpers import toy_spec

    from testbed.cli import main
    from testbed.results import read_metrics

    bandit = {"name": "g", "problems": [{"kind": "tabular", "contexts": 3, "actions": 4}], "seeds": 2,
              "iterations": 20, "eval_every": 10, "algorithms": [{"name": "grpo", "k": 4, "contexts": 25, "lr": 0.2}]}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bandit))
    assert main(["run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    rows = read_metrics(tmp_path / "b")
    last = [r for r in rows if r["iteration"] == 20]
    first = [r for r in rows if r["iteration"] == 0]
    assert len(last) == 2 and all(r["samples"] == 20 * 100 for r in last)
    assert np.mean([r["suboptimality"] for r in last]) < np.mean([r["suboptimality"] for r in first])
    lm = toy_spec({"name": "grpo", "k": 2}, iterations=2, batch=8, minibatch=8, eval_every=2)
    (tmp_path / "l.yaml").write_text(yaml.safe_dump(lm))
    assert main(["llm", "run", str(tmp_path / "l.yaml"), "--out", str(tmp_path / "l"), "--quiet"]) == 0
    lrows = read_metrics(tmp_path / "l")
    assert [r["samples"] for r in lrows] == [0, 16, 32] and all(np.isfinite(r["loss"]) for r in lrows[1:])
