"""The reward-model baseline on preference problems: ``bt_rebel`` (fit Bradley–Terry rewards to comparisons
of pi_ref pairs, then reward REBEL on them). See :mod:`testbed.algorithms.preference` for the family; DPO on
pi_ref pairs labelled by the preference oracle is :class:`~testbed.algorithms.dpo.DPO` with ``labels: preference``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.algorithms.base import Step, items, nonneg, one_of, positive
from testbed.algorithms.preference import _PreferenceAlgorithm, _tabular
from testbed.algorithms.rebel import REBEL, REBELConfig
from testbed.errors import InputError
from testbed.policies import Policy, TabularSoftmax
from testbed.problems.bandit import ProblemBatch, TabularBandit
from testbed.problems.preference import bradley_terry_fit


@dataclass
class BTREBELConfig:
    eta: float = positive(1.0, "REBEL step size on the fitted rewards")
    beta: float = nonneg(0.0, "REBEL KL coefficient towards pi_ref")
    mode: str = one_of("exact", ("exact", "sampled"), "REBEL: exact update or sampled pairs")
    pairs: int = items(1000, "sampled REBEL: pairs per iteration", unread_when={"mode": ("exact",)})
    reward_model: str = one_of("population", ("population", "sampled"),
                               "BT fit to the exact P over pi_ref pairs, or to a sampled data set")
    dataset: int = items(2000, "reward_model sampled: labelled comparisons (x ~ rho, y, y' ~ pi_ref)",
                         unread_when={"reward_model": ("population",)})
    l2: float = nonneg(1e-4, "reward_model sampled: ridge on the BT rewards (finite MLE for unanimous pairs)",
                       unread_when={"reward_model": ("population",)})

    def validate(self, where: str) -> None:
        if self.beta > 0 and self.eta * self.beta > 1:
            raise InputError(f"{where}: eta·beta must be <= 1 for the KL-shaped update (got {self.eta * self.beta:g})")


class BTREBEL(_PreferenceAlgorithm):
    """Reward-model RLHF baseline: Bradley–Terry rewards fitted once, then reward REBEL on them."""

    name = "bt_rebel"
    Config = BTREBELConfig
    report_iterate = "last"

    @staticmethod
    def draws(config: BTREBELConfig) -> bool:
        return config.mode != "exact" or config.reward_model != "population"  # a sampled data set: drawn at construction

    def __init__(self, config: BTREBELConfig, problem, rng):
        super().__init__(config, problem, rng)
        members = getattr(problem, "members", None)  # a stack: each member's reward model from its own generator
        pairs = list(zip(members, rng)) if members is not None else [(problem, rng)]
        # the population fit is a function of the problem alone: once per distinct member (seeds share one problem);
        # every fit of the stack is one batched Newton solve (each context's fit is the same in any batch)
        if config.reward_model == "population":
            distinct = list({id(m): m for m, _ in pairs}.values())
            data = [self._data(m, None) for m in distinct]
            fitted = dict(zip(map(id, distinct), self._fit_all(data)))
            fits = [(fitted[id(m)], 0, 0) for m, _ in pairs]
        else:
            data = [self._data(m, g) for m, g in pairs]
            fits = [(r, *d[3:]) for r, d in zip(self._fit_all(data), data)]
        self._pending, self._pending_queries = fits[0][1:]
        made = {}  # one reward problem per distinct fit (a validated TabularBandit costs ~150 µs; seeds share one)
        for (r, *_), m in zip(fits, members or [problem]):
            if id(r) not in made:
                made[id(r)] = TabularBandit(r, m.rho, m.pi_ref, name=f"{m.name}-bt-rewards")
        rewards = [made[id(r)] for r, *_ in fits]
        self.reward_problem = ProblemBatch(rewards) if members is not None else rewards[0]
        self.rewards = self.reward_problem.rewards
        rc = REBELConfig(eta=config.eta, beta=config.beta, mode=config.mode, pairs=config.pairs)
        self.rebel = REBEL(rc, self.reward_problem, rng)

    def _data(self, p, rng: np.random.Generator | None) -> tuple:
        """One problem's Bradley–Terry data: (P, pair weights, ridge, responses, queries its data set cost, counted
        at the first step): the exact P over pi_ref pairs, or the win rates of a sampled data set."""
        config = self.config
        if config.reward_model == "population":
            return p.preferences, p.pi_ref[:, :, None] * p.pi_ref[:, None, :], 0.0, 0, 0
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
        # 2n responses drawn for the data set, one preference query per comparison
        return P_hat, counts / (2 * n), config.l2, 2 * n, n

    @staticmethod
    def _fit_all(data: list[tuple]) -> list[np.ndarray]:
        """The Bradley–Terry rewards [X, Y] of each problem's data, all contexts in one batched fit."""
        X = data[0][0].shape[0]
        rewards = bradley_terry_fit(np.concatenate([d[0] for d in data]), pair_weights=np.concatenate([d[1] for d in data]),
                                    l2=data[0][2])
        return [rewards[i * X:(i + 1) * X] for i in range(len(data))]

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
