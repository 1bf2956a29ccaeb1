"""The reward-model baselines on preference problems: ``bt_rebel`` (fit Bradley–Terry rewards to comparisons
of pi_ref pairs, then reward REBEL on them) and ``dpo_pref`` (DPO on pi_ref pairs labelled by the preference
oracle). See :mod:`testbed.algorithms.preference` for the family."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from testbed.algorithms.base import Step, adam_fit, count, nonneg, one_of, positive
from testbed.algorithms.preference import _PreferenceAlgorithm, _tabular
from testbed.algorithms.rebel import REBEL, REBELConfig
from testbed.errors import InputError
from testbed.losses import dpo_loss
from testbed.policies import Policy, TabularSoftmax
from testbed.problems.bandit import TabularBandit
from testbed.problems.preference import bradley_terry_fit


@dataclass
class BTREBELConfig:
    eta: float = positive(1.0, "REBEL step size on the fitted rewards")
    beta: float = nonneg(0.0, "REBEL KL coefficient towards pi_ref")
    mode: str = one_of("exact", ("exact", "sampled"), "REBEL: exact update or sampled pairs")
    pairs: int = count(1000, "sampled REBEL: pairs per iteration")
    reward_model: str = one_of("population", ("population", "sampled"),
                               "BT fit to the exact P over pi_ref pairs, or to a sampled data set")
    dataset: int = count(2000, "reward_model sampled: labelled comparisons (x ~ rho, y, y' ~ pi_ref)")
    l2: float = nonneg(1e-4, "reward_model sampled: ridge on the BT rewards (finite MLE for unanimous pairs)")

    def validate(self, where: str) -> None:
        if self.beta > 0 and self.eta * self.beta > 1:
            raise InputError(f"{where}: eta·beta must be <= 1 for the KL-shaped update (got {self.eta * self.beta:g})")


class BTREBEL(_PreferenceAlgorithm):
    """Reward-model RLHF baseline: Bradley–Terry rewards fitted once, then reward REBEL on them."""

    name = "bt_rebel"
    Config = BTREBELConfig
    report_iterate = "last"

    def __init__(self, config: BTREBELConfig, problem, rng: np.random.Generator):
        super().__init__(config, problem, rng)
        p = problem
        pair_w = p.pi_ref[:, :, None] * p.pi_ref[:, None, :]
        if config.reward_model == "population":
            self.rewards = bradley_terry_fit(p.preferences, pair_weights=pair_w)
            self._pending = self._pending_queries = 0
        else:
            n = config.dataset
            x = p.sample_contexts(rng, n)
            ref = TabularSoftmax(p.log_pi_ref)
            y, y2 = ref.sample(rng, x), ref.sample(rng, x)
            o = p.sample_preferences(rng, x, y, y2)
            X, Y = p.num_contexts, p.num_actions
            counts, wins = np.zeros((X, Y, Y)), np.zeros((X, Y, Y))
            np.add.at(counts, (x, y, y2), 1.0)
            np.add.at(counts, (x, y2, y), 1.0)
            np.add.at(wins, (x, y, y2), o)
            np.add.at(wins, (x, y2, y), 1.0 - o)
            P_hat = np.where(counts > 0, wins / np.maximum(counts, 1), 0.5)
            self.rewards = bradley_terry_fit(P_hat, pair_weights=counts / (2 * n), l2=config.l2)
            self._pending = 2 * n  # responses drawn for the data set, reported at the first step
            self._pending_queries = n  # one preference query per comparison of the data set
        self.reward_problem = TabularBandit(self.rewards, p.rho, p.pi_ref, name=f"{p.name}-bt-rewards")
        rc = REBELConfig(eta=config.eta, beta=config.beta, mode=config.mode, pairs=config.pairs)
        self.rebel = REBEL(rc, self.reward_problem, rng)

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "bt_rebel")
        step = self.rebel.update(policy, rng)
        if self._pending:
            step.samples, self._pending = (step.samples or 0) + self._pending, 0
        if self._pending_queries:
            step.queries, self._pending_queries = (step.queries or 0) + self._pending_queries, 0
        return step

    @staticmethod
    def counted(config: BTREBELConfig) -> bool:
        """Counted when REBEL samples or the reward model is fitted to a sampled data set."""
        return config.mode == "sampled" or config.reward_model == "sampled"


# ----- DPO on preference pairs -----------------------------------------------------------------------
@dataclass
class DPOPrefConfig:
    beta: float = positive(0.1, "DPO temperature beta > 0")
    mode: str = one_of("exact", ("exact", "sampled"), "population loss (gradient descent) or a sampled data set (Adam)")
    lr: float = positive(1.0, "exact: gradient-descent step on the logits; sampled: Adam learning rate")
    dataset: int = count(2000, "sampled: labelled pairs (x ~ rho, y, y' ~ pi_ref), drawn once")
    epochs: int = count(1, "sampled: Adam epochs over the data set per iteration")
    minibatch: int = count(256, "sampled: minibatch size")


class DPOPreference(_PreferenceAlgorithm):
    """DPO on pi_ref pairs labelled by the preference oracle (offline; population or sampled)."""

    name = "dpo_pref"
    Config = DPOPrefConfig
    report_iterate = "last"

    def __init__(self, config: DPOPrefConfig, problem, rng: np.random.Generator):
        super().__init__(config, problem, rng)
        p = problem
        self.log_ref = torch.as_tensor(p.log_pi_ref)
        X, Y = p.num_contexts, p.num_actions
        if config.mode == "exact":  # every ordered (x, chosen, rejected) with its probability
            x, yw, yl = (a.ravel() for a in np.meshgrid(np.arange(X), np.arange(Y), np.arange(Y), indexing="ij"))
            w = p.rho[x] * p.pi_ref[x, yw] * p.pi_ref[x, yl] * p.preferences[x, yw, yl]
            keep = yw != yl
            self.data = (x[keep], yw[keep], yl[keep])
            self.weight = torch.as_tensor(w[keep] / w[keep].sum())
            self._pending = 0
        else:
            n = config.dataset
            x = p.sample_contexts(rng, n)
            ref = TabularSoftmax(p.log_pi_ref)
            y, y2 = ref.sample(rng, x), ref.sample(rng, x)
            won = p.sample_preferences(rng, x, y, y2).astype(bool)
            self.data = (x, np.where(won, y, y2), np.where(won, y2, y))
            self.weight = None
            self._pending = 2 * n
        self._pending_queries = self._pending // 2  # one preference query per labelled pair

    def _loss(self, theta: torch.Tensor, idx: np.ndarray | None = None) -> torch.Tensor:
        x, yw, yl = self.data
        w = self.weight
        if idx is not None:
            x, yw, yl = x[idx], yw[idx], yl[idx]
        lp = torch.log_softmax(theta, dim=-1) - self.log_ref
        tx = torch.as_tensor(x)
        return dpo_loss(lp[tx, torch.as_tensor(yw)], lp[tx, torch.as_tensor(yl)], self.config.beta, w)

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "dpo_pref")
        cfg = self.config
        if cfg.mode == "exact":
            theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
            loss = self._loss(theta)
            loss.backward()
            with torch.no_grad():
                new = (theta - cfg.lr * theta.grad).numpy().copy()
            return Step(policy.with_params(new), float(loss.detach()), None)
        n = len(self.data[0])
        new, loss = adam_fit(policy, lambda th, idx: self._loss(th, idx), n, cfg.epochs, cfg.minibatch, cfg.lr, rng)
        samples, queries, self._pending, self._pending_queries = self._pending, self._pending_queries, 0, 0
        return Step(new, loss, samples, queries)
