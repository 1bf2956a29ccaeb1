"""RLOO: k samples per prompt, the leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024).

Each iteration: x ~ rho (bandit: ``contexts`` of them; LM: the batch of prompts), k responses
y_1 … y_k ~ pi_t per prompt, one reward query each, the sequence reward KL-shaped
r - beta·(ln pi_t - ln pi_ref), the advantage A_j = r_j - mean_{l != j} r_l
(:func:`testbed.losses.leave_one_out_advantage`), then ``epochs`` passes of minibatch Adam (AdamW on an
LM) on the clipped surrogate :func:`testbed.losses.ppo_clip_loss` of ln pi_theta - ln pi_t — plain
REINFORCE with the baseline when one minibatch covers the batch and epochs = 1 (the ratio is 1 at theta_t, so
nothing is clipped); with several minibatches per epoch the ratio moves off 1 after the first step and clips.
:class:`~testbed.algorithms.grpo.GRPO` is this method with another advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from testbed.algorithms.base import (
    BANDIT,
    Algorithm,
    Step,
    adam_fit,
    count,
    flag,
    grad_accum_field,
    items,
    minibatch_field,
    nonneg,
    per_seed,
    positive,
    take,
    unit_open,
)
from testbed.errors import InputError
from testbed.losses import kl_shaped_reward, leave_one_out_advantage, ppo_clip_loss, whiten


@dataclass
class RLOOConfig:
    k: int = items(2, per_item=True, doc="samples per prompt (>= 2)")
    beta: float = nonneg(0.0, "KL coefficient in the sequence reward r - beta·(ln pi_t - ln pi_ref)", lm=0.05)
    epochs: int = count(1, "passes over each batch (1: plain REINFORCE with the baseline)")
    clip_eps: float = unit_open(0.2, "clip range when epochs > 1")
    normalize_advantage: bool = flag(False, "standardise advantages within each batch")
    contexts: int = items(250, "prompts per iteration (k responses each); LM: train.batch", tracks=BANDIT)
    minibatch: int = minibatch_field(64, "responses per optimiser step")
    grad_accum: int = grad_accum_field()
    lr: float = positive(0.05, "Adam learning rate (LM: train.lr)", tracks=BANDIT)

    def validate(self, where: str) -> None:
        if self.k < 2:
            raise InputError(f"{where}.k must be >= 2 for a leave-one-out baseline (got {self.k})")


class RLOO(Algorithm):
    name = "rloo"
    Config = RLOOConfig
    summary = "k samples per prompt, REINFORCE with the leave-one-out baseline (Ahmadian et al. 2024)"
    tracks = ("bandit", "lm")
    tests = ("test_rloo_and_grpo_advantages_on_a_bandit_batch", "test_one_token_lm_update_equals_the_tabular_update[rloo]")

    @staticmethod
    def items_per_prompt(config) -> int:
        return config.k

    def __init__(self, config, problem, rng):
        super().__init__(config, problem, rng)
        self._adam: dict = {}

    def advantage(self, r: torch.Tensor) -> torch.Tensor:
        """[N, k] rewards (k samples of prompt i in row i) -> [N, k] advantages."""
        return leave_one_out_advantage(r)

    def _advantages(self, r: torch.Tensor, n: int) -> torch.Tensor:
        adv = self.advantage(r.reshape(n, self.config.k)).reshape(-1)
        return whiten(adv) if self.config.normalize_advantage else adv

    # ----- bandit back-end --------------------------------------------------------------------
    def _draw(self, policy, rng: np.random.Generator, p) -> tuple[np.ndarray, ...]:
        """x ~ rho (each repeated k times), y ~ pi_t, ln pi_t(y|x) and the (KL-shaped) reward of one seed."""
        cfg = self.config
        x = np.repeat(p.sample_contexts(rng, cfg.contexts), cfg.k)
        y = policy.sample(rng, x)
        lp = policy.log_probs_at(x)[np.arange(len(x)), y]
        r = p.sample_rewards(rng, x, y)
        if cfg.beta > 0:
            r = kl_shaped_reward(r, lp, p.log_pi_ref[x, y], cfg.beta)
        return x, y, lp, r

    def update(self, policy, rng) -> Step:
        cfg = self.config
        x, y, lp_t, r = per_seed(self._draw, policy, rng, self.problem)
        lp_t = torch.as_tensor(lp_t)
        adv = self._advantages(torch.as_tensor(r), cfg.contexts)

        def loss_fn(theta: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            return ppo_clip_loss(policy.torch_log_prob(theta, take(x, idx), take(y, idx)) - take(lp_t, idx),
                                 take(adv, idx), cfg.clip_eps)

        n = len(x)
        new, loss = adam_fit(policy, loss_fn, n, cfg.epochs, cfg.minibatch, cfg.lr, rng, self._adam)
        return Step(new, loss, n, n)

    # ----- LM back-end ------------------------------------------------------------------------
    def lm_update(self, q, qm) -> Step:
        cfg, ctx = self.config, self.ctx
        B, k = len(q), cfg.k
        qk, qmk = q.repeat_interleave(k, 0), qm.repeat_interleave(k, 0)
        y = ctx.sample(qk, qmk)
        ro = ctx.rollout_stats(qk, qmk, y)
        lp_t = ro["lp"].sum(1)
        r = kl_shaped_reward(ro["score"], lp_t, ro["ref"].sum(1), cfg.beta)
        adv = self._advantages(r, B)
        pol = ctx.policy

        def loss_fn(i):
            return ppo_clip_loss(pol.seq_logprob(qk[i], qmk[i], y[i]) - lp_t[i], adv[i], cfg.clip_eps)

        loss = ctx.optimise(cfg, B * k, cfg.epochs, loss_fn)
        return Step(None, loss, B * k, B * k, ctx.trl_stats(ro, cfg.beta))
