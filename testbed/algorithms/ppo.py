"""PPO on bandits: the clipped surrogate with a learned baseline (Schulman et al. 2017).

Each iteration: x ~ rho, y ~ pi_t (``batch`` responses, one reward query each), reward KL-shaped
r - beta·(ln pi_t - ln pi_ref) as in REBEL; advantage A = r - V(x) from the critic (normalised per
batch if asked); then ``epochs`` passes of minibatch Adam on

    L = L_clip(theta) - ent_coef·H(pi_theta(.|x)) + 0.5·(V_w(x) - r)²  [value-clipped if value_clip > 0]

The critic is a value table per context (``table``), linear in context features (``linear``:
the flattened phi(x, ., .) of a linear problem, one-hot x otherwise) or a one-hidden-layer tanh
MLP on them (``mlp``). One step is one-step GAE (gamma = 1), so the return is r. Adam's moments
persist across iterations, as in CleanRL. Logged extras, measured on the whole batch after the
update: ``clipfrac`` (share with |rho - 1| > eps), ``approx_kl`` (mean of (rho - 1) - ln rho, the
k3 estimator), ``ratio_max``, ``value_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from testbed.algorithms.base import Algorithm, Step, count, flag, nonneg, one_of, positive, unit_open
from testbed.losses import kl_shaped_reward, ppo_clip_loss, value_loss
from testbed.policies import Policy
from testbed.problems import LinearBandit, TabularBandit

CRITIC_HIDDEN = 32


@dataclass
class PPOConfig:
    lr: float = positive(0.05, "policy Adam learning rate")
    batch: int = count(500, "responses per iteration (one reward query each)")
    epochs: int = count(4, "passes over the batch per iteration, reshuffled")
    minibatch: int = count(64, "Adam minibatch size")
    clip_eps: float = unit_open(0.2, "clip range eps in (0, 1)")
    beta: float = nonneg(0.0, "KL coefficient: reward shaping r - beta·(ln pi_t - ln pi_ref)")
    critic: str = one_of("table", ("table", "linear", "mlp"), "baseline: value table, linear or MLP critic")
    critic_lr: float = positive(0.1, "critic Adam learning rate")
    value_clip: float = nonneg(0.0, "value clipping range (0: off)")
    normalize_advantage: bool = flag(True, "standardise advantages within each batch")
    ent_coef: float = nonneg(0.0, "entropy bonus coefficient")


class PPO(Algorithm):
    name = "ppo"
    Config = PPOConfig

    def __init__(self, config: PPOConfig, problem: TabularBandit, rng: np.random.Generator):
        super().__init__(config, problem, rng)
        X = problem.num_contexts
        if config.critic == "table" or not isinstance(problem, LinearBandit):
            feats = np.eye(X)
        else:
            feats = problem.features.reshape(X, -1)
        self.ctx = torch.as_tensor(feats)
        k = feats.shape[1]
        if config.critic == "mlp":
            b = 1 / np.sqrt(k)
            w = [rng.uniform(-b, b, CRITIC_HIDDEN * k), rng.uniform(-b, b, CRITIC_HIDDEN), np.zeros(CRITIC_HIDDEN + 1)]
        else:
            w = [np.zeros(k + 1)]
        self.w = torch.tensor(np.concatenate(w), dtype=torch.float64)
        self._adam: dict = {}

    def value(self, w: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        c = self.ctx[torch.as_tensor(x)]
        k = c.shape[1]
        if self.config.critic != "mlp":
            return c @ w[:k] + w[k]
        H = CRITIC_HIDDEN
        h = torch.tanh(c @ w[:H * k].reshape(H, k).T + w[H * k:H * k + H])
        return h @ w[H * k + H:H * k + 2 * H] + w[-1]

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        return self.optimise(policy, self.collect(policy, rng), rng)

    def collect(self, policy: Policy, rng: np.random.Generator) -> dict:
        """The batch: x, y, ln pi_t(y|x), (shaped) reward r, critic values V_old(x) and advantages."""
        cfg, p, N = self.config, self.problem, self.config.batch
        x = p.sample_contexts(rng, N)
        y = policy.sample(rng, x)
        lp_old = torch.as_tensor(policy.log_probs_at(x)[np.arange(N), y])
        r = p.sample_rewards(rng, x, y)
        if cfg.beta > 0:
            r = kl_shaped_reward(r, lp_old.numpy(), p.log_pi_ref[x, y], cfg.beta)
        r = torch.as_tensor(r)
        with torch.no_grad():
            v_old = self.value(self.w, x)
        adv = r - v_old
        if cfg.normalize_advantage and N > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return {"x": x, "y": y, "lp_old": lp_old, "r": r, "v_old": v_old, "adv": adv}

    def optimise(self, policy: Policy, batch: dict, rng: np.random.Generator) -> Step:
        """K epochs of minibatch Adam on the clipped surrogate + value loss (+ entropy bonus)."""
        cfg = self.config
        x, y, lp_old, r, v_old, adv = (batch[k] for k in ("x", "y", "lp_old", "r", "v_old", "adv"))
        N = len(x)
        theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
        w = self.w.clone().requires_grad_(True)
        opt = torch.optim.Adam([{"params": [theta], "lr": cfg.lr}, {"params": [w], "lr": cfg.critic_lr}])
        if "adam" in self._adam:
            opt.load_state_dict(self._adam["adam"])
        vclip = cfg.value_clip or None
        for _ in range(cfg.epochs):
            perm = rng.permutation(N)
            for s in range(0, N, cfg.minibatch):
                i = perm[s:s + cfg.minibatch]
                ti = torch.as_tensor(i)
                lp_all = policy.torch_log_probs(theta, x[i])
                lp = lp_all.gather(1, torch.as_tensor(y[i])[:, None])[:, 0]
                loss = ppo_clip_loss(lp - lp_old[ti], adv[ti], cfg.clip_eps)
                if cfg.ent_coef:
                    loss = loss + cfg.ent_coef * torch.sum(lp_all.exp() * lp_all, dim=-1).mean()
                loss = loss + value_loss(self.value(w, x[i]), v_old[ti], r[ti], vclip)
                opt.zero_grad()
                loss.backward()
                opt.step()
        self._adam["adam"] = opt.state_dict()
        self.w = w.detach().clone()
        with torch.no_grad():
            logratio = policy.torch_log_prob(theta, x, y) - lp_old
            ratio = logratio.exp()
            extras = {"clipfrac": float(((ratio - 1).abs() > cfg.clip_eps).double().mean()),
                      "approx_kl": float(((ratio - 1) - logratio).mean()),
                      "ratio_max": float(ratio.max()),
                      "value_loss": float(value_loss(self.value(self.w, x), v_old, r))}
            final = float(ppo_clip_loss(logratio, adv, cfg.clip_eps))
        return Step(policy.with_params(theta.detach().numpy().copy()), final, N, N, extras)
