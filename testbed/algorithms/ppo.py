"""PPO on bandits: the clipped surrogate with a learned baseline (Schulman et al. 2017).

Each iteration: x ~ rho, y ~ pi_t (``batch`` responses, one reward query each), reward KL-shaped
r - beta·(ln pi_t - ln pi_ref) as in REBEL; advantage A = r - V(x) from the critic (normalised per
batch if asked); then ``epochs`` passes of minibatch Adam on

    L = L_clip(theta) - ent_coef·H(pi_theta(.|x)) + 0.5·(V_w(x) - r)²  [value-clipped if value_clip > 0]

The critic is a value table per context (``table``), linear in context features (``linear``:
the flattened phi(x, ., .) of a linear problem, one-hot x otherwise) or a one-hidden-layer tanh
MLP on them (``mlp``). One step is one-step GAE (gamma = 1), so the return is r. Adam's moments
persist across iterations, as in CleanRL. Logged extras, measured on the whole batch after the
update: ``policy/clipfrac`` (share with |rho - 1| > eps), ``policy/approx_kl`` (mean of (rho - 1) - ln rho,
the k3 estimator), ``policy/ratio_max``, ``loss/value``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from testbed.algorithms.base import (
    BANDIT,
    DIFFUSION,
    LM,
    Algorithm,
    Step,
    count,
    flag,
    grad_accum_field,
    items,
    minibatch_field,
    nonneg,
    nonneg_count,
    one_of,
    per_seed,
    permutations,
    positive,
    take,
    unit_open,
)
from testbed.errors import InputError
from testbed.losses import (
    gae,
    kl_shaped_reward,
    per_prompt_advantage,
    ppo_clip_loss,
    tracked_prompt_advantage,
    value_loss,
    whiten,
)
from testbed.policies import Policy, take_contexts
from testbed.problems import LinearBandit, TabularBandit

CRITIC_HIDDEN = 32


@dataclass
class PPOConfig:
    lr: float = positive(0.05, "policy Adam learning rate (LM: train.lr)", tracks=BANDIT)
    batch: int = items(500, "responses per iteration (one reward query each); LM: train.batch prompts", tracks=BANDIT)
    epochs: int = count(4, "passes over the batch per iteration, reshuffled")
    minibatch: int = minibatch_field(64, "responses per optimiser step")
    grad_accum: int = grad_accum_field()
    clip_eps: float = unit_open(0.2, "clip range eps in (0, 1)")
    beta: float = nonneg(0.0, "KL coefficient: reward shaping r - beta·(ln pi_t - ln pi_ref); LM: per token", lm=0.05)
    critic: str = one_of("table", ("table", "linear", "mlp", "backbone", "prompt"), "baseline: value table, linear or "
                         "MLP critic; LM: a value head on its own copy of the policy backbone (LoRA-adapted when the "
                         "policy is); diffusion: prompt (DDPO's per-prompt reward mean and std, no value model)",
                         lm="backbone", diffusion="prompt")
    critic_lr: float = positive(0.1, "critic Adam learning rate", tracks=BANDIT)
    value_clip: float = nonneg(0.0, "value clipping range (0: off)", lm=0.2, not_on=DIFFUSION)
    vf_coef: float = positive(1.0, "value-loss coefficient", lm=0.1, not_on=DIFFUSION)
    normalize_advantage: bool = flag(True, "standardise advantages within each batch (LM: whitened over valid tokens)")
    ent_coef: float = nonneg(0.0, "entropy bonus coefficient", tracks=BANDIT)
    gamma: float = positive(1.0, "GAE discount", tracks=LM, not_on=DIFFUSION)
    lam: float = positive(0.95, "GAE lambda", tracks=LM, not_on=DIFFUSION)
    whiten_rewards: bool = flag(False, "whiten the per-token rewards before GAE", tracks=LM, not_on=DIFFUSION)
    logprob: str = one_of("sum", ("sum", "mean"), "diffusion: a denoising step's log-probability in the clipped ratio, "
                          "its Gaussian density summed over the D pixels (sum: the density) or averaged (mean: "
                          "DDPO's; the log-ratio divided by D)", tracks=DIFFUSION)
    adv_clip: float = nonneg(0.0, "diffusion: clip the advantages to [-adv_clip, adv_clip] (0: none; DDPO: 5)",
                             tracks=DIFFUSION)
    prompt_buffer: int = nonneg_count(0, "diffusion: 0 = per-prompt statistics within the batch; N > 0 = DDPO's "
                                         "PerPromptStatTracker: each prompt's last N rewards across iterations, the "
                                         "batch's mean and std until it holds prompt_min_count (DDPO: 16, aesthetic "
                                         "32)", tracks=DIFFUSION)
    prompt_min_count: int = count(16, "diffusion: rewards a prompt's buffer holds before its own mean and std are "
                                      "used (DDPO: 16)", tracks=DIFFUSION, unread_when={"prompt_buffer": (0,)})

    def validate(self, where: str) -> None:
        if self.prompt_buffer and self.prompt_min_count > self.prompt_buffer:
            raise InputError(f"{where}.prompt_min_count {self.prompt_min_count} exceeds prompt_buffer "
                             f"{self.prompt_buffer}: a buffer never holds that many rewards")


class PPO(Algorithm):
    name = "ppo"
    Config = PPOConfig
    summary = "clipped surrogate with a learned baseline (Schulman et al. 2017); LM: per-token KL, GAE"
    tracks = ("bandit", "lm", "diffusion")
    tests = ("test_ppo_ratio_can_exceed_the_clip_range_and_clipped_samples_have_zero_gradient",
             "test_ppo_critic_learns_the_context_value", "test_four_algorithms_reach_the_threshold_on_8_of_10_seeds[ppo]",
             "test_one_token_lm_update_equals_the_tabular_update[ppo]")

    @staticmethod
    def needs_critic(config) -> bool:
        return config.critic != "prompt"

    @staticmethod
    def check_track(config, track: str) -> str | None:
        if (track == "diffusion") != (config.critic == "prompt"):
            return "critic: prompt (DDPO's per-prompt baseline) is the diffusion back-end's and only its"
        if track == "diffusion":
            return None
        if (track == "lm") != (config.critic == "backbone"):
            return "critic: backbone is the LM critic; bandits take table, linear or mlp"
        return None

    @staticmethod
    def batchable(config: PPOConfig, kind: str) -> bool:
        return kind in ("tabular", "loglinear") and config.critic != "mlp"

    def __init__(self, config: PPOConfig, problem: TabularBandit, rng):
        super().__init__(config, problem, rng)
        if self.ctx is not None:
            self.prompt_stats: dict = {}  # image track, prompt_buffer > 0: each prompt's buffer of rewards (checkpointed)
            return
        X = problem.num_contexts
        members = getattr(problem, "members", None)  # a stack of problems: one critic each
        self._table = config.critic == "table" or not isinstance((members or [problem])[0], LinearBandit)
        if self._table:
            feats = np.eye(X) if members is None else np.broadcast_to(np.eye(X), (len(members), X, X)).copy()
        else:
            feats = problem.features.reshape(problem.features.shape[:-3] + (X, -1))
        self.ctx = torch.as_tensor(feats)
        k = feats.shape[-1]
        if config.critic == "mlp":
            b = 1 / np.sqrt(k)
            w = [rng.uniform(-b, b, CRITIC_HIDDEN * k), rng.uniform(-b, b, CRITIC_HIDDEN), np.zeros(CRITIC_HIDDEN + 1)]
        else:
            w = [np.zeros(feats.shape[:-2] + (k + 1,))]
        self.w = torch.tensor(np.concatenate(w, axis=-1), dtype=torch.float64)
        self._adam: dict = {}

    def value(self, w: torch.Tensor, x: np.ndarray) -> torch.Tensor:
        k = self.ctx.shape[-1]
        if getattr(self, "_table", False) and self.config.critic != "mlp":
            # one-hot context features: the product-and-sum below is exactly w[x] (+ the bias), gathered directly
            return torch.gather(w[..., :k], -1, torch.as_tensor(x)) + w[..., k:]
        c = take_contexts(self.ctx, torch.as_tensor(x))
        if self.config.critic != "mlp":  # a product and a sum over k (not a matmul): a stack is exact per member
            return torch.sum(c * w[..., None, :k], dim=-1) + w[..., k:]
        H = CRITIC_HIDDEN
        h = torch.tanh(c @ w[:H * k].reshape(H, k).T + w[H * k:H * k + H])
        return h @ w[H * k + H:H * k + 2 * H] + w[-1]

    def update(self, policy: Policy, rng) -> Step:
        return self.optimise(policy, self.collect(policy, rng), rng)

    def _draw(self, policy: Policy, rng: np.random.Generator, p: TabularBandit) -> tuple[np.ndarray, ...]:
        """x ~ rho, y ~ pi_t, ln pi_t(y|x) and the (KL-shaped) reward of one seed."""
        N = self.config.batch
        x = p.sample_contexts(rng, N)
        y = policy.sample(rng, x)
        lp_old = policy.log_probs_at(x)[np.arange(N), y]
        r = p.sample_rewards(rng, x, y)
        if self.config.beta > 0:
            r = kl_shaped_reward(r, lp_old, p.log_pi_ref[x, y], self.config.beta)
        return x, y, lp_old, r

    def collect(self, policy: Policy, rng) -> dict:
        """The batch: x, y, ln pi_t(y|x), (shaped) reward r, critic values V_old(x) and advantages."""
        x, y, lp_old, r = per_seed(self._draw, policy, rng, self.problem)
        lp_old, r = torch.as_tensor(lp_old), torch.as_tensor(r)
        with torch.no_grad():
            v_old = self.value(self.w, x)
        adv = r - v_old
        N = x.shape[-1]
        if self.config.normalize_advantage and N > 1:  # sample std from sums over the last axis (exact per seed)
            centred = adv - adv.mean(dim=-1, keepdim=True)
            adv = centred / (torch.sqrt(torch.sum(centred ** 2, dim=-1, keepdim=True) / (N - 1)) + 1e-8)
        return {"x": x, "y": y, "lp_old": lp_old, "r": r, "v_old": v_old, "adv": adv}

    def optimise(self, policy: Policy, batch: dict, rng) -> Step:
        """K epochs of minibatch Adam on the clipped surrogate + value loss (+ entropy bonus).
        A stack of seeds minimises the sum of their losses (Adam is elementwise: each as if alone)."""
        cfg = self.config
        x, y, lp_old, r, v_old, adv = (batch[k] for k in ("x", "y", "lp_old", "r", "v_old", "adv"))
        N = x.shape[-1]
        theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
        w = self.w.clone().requires_grad_(True)
        opt = torch.optim.Adam([{"params": [theta], "lr": cfg.lr}, {"params": [w], "lr": cfg.critic_lr}])
        if "adam" in self._adam:
            opt.load_state_dict(self._adam["adam"])
        vclip = cfg.value_clip or None
        for _ in range(cfg.epochs):
            perm = permutations(rng, N)
            for s in range(0, N, cfg.minibatch):
                i = perm[..., s:s + cfg.minibatch]
                xi = take(x, i)
                if cfg.ent_coef:
                    lp_all = policy.torch_log_probs(theta, xi)
                    lp = lp_all.gather(-1, torch.as_tensor(take(y, i))[..., None])[..., 0]
                else:
                    lp = policy.torch_log_prob_of(theta, xi, take(y, i))[0]
                loss = ppo_clip_loss(lp - take(lp_old, i), take(adv, i), cfg.clip_eps)
                if cfg.ent_coef:
                    loss = loss + cfg.ent_coef * torch.sum(lp_all.exp() * lp_all, dim=-1).mean(dim=-1)
                loss = loss + cfg.vf_coef * value_loss(self.value(w, xi), take(v_old, i), take(r, i), vclip)
                opt.zero_grad()
                loss.sum().backward()
                opt.step()
        self._adam["adam"] = opt.state_dict()
        self.w = w.detach().clone()
        with torch.no_grad():
            logratio = policy.torch_log_prob(theta, x, y) - lp_old
            ratio = logratio.exp()
            extras = {"policy/clipfrac": ((ratio - 1).abs() > cfg.clip_eps).double().mean(dim=-1),
                      "policy/approx_kl": ((ratio - 1) - logratio).mean(dim=-1),
                      "policy/ratio_max": ratio.max(dim=-1).values,
                      "loss/value": value_loss(self.value(self.w, x), v_old, r)}
            final = ppo_clip_loss(logratio, adv, cfg.clip_eps)
        extras = {k: float(v) if v.ndim == 0 else v.numpy() for k, v in extras.items()}
        return Step(policy.with_params(theta.detach().numpy().copy()), float(final) if final.ndim == 0 else final.numpy(),
                    N, N, extras)

    # ----- LM back-end ------------------------------------------------------------------------
    def lm_update(self, q, qm) -> Step:
        """One response per prompt; per-token reward -beta·(ln pi_t - ln pi_ref) with the score at the last
        token, GAE on the critic's values, whitened advantages, then clipped policy + value losses by the
        back-end's AdamW solver (policy and critic in one module, as TRL does)."""
        cfg, ctx = self.config, self.ctx
        q, qm = ctx.left_pad(q, qm)
        y = ctx.sample(q, qm)
        ro = ctx.rollout_stats(q, qm, y)
        mask = ro["mask"]
        with torch.no_grad():
            _, v_old = ctx.prepared(q, qm, y, mask)
            v_old = v_old * mask
            rew = -cfg.beta * (ro["lp"] - ro["ref"]) * mask
            rew[torch.arange(len(y)), ctx.last_token_index(mask)] += ro["score"]
            if cfg.whiten_rewards:
                rew = whiten(rew, mask, shift_mean=False)
            adv, ret = gae(rew, v_old, mask, cfg.gamma, cfg.lam)
            if cfg.normalize_advantage:
                adv = whiten(adv, mask)
        lp_old = ro["lp"]
        vfs = []

        def loss_fn(i):
            pg, vf = self.batch_loss(q[i], qm[i], y[i], mask[i], lp_old[i], adv[i], v_old[i], ret[i])
            vfs.append(float(vf.detach()))
            return pg + cfg.vf_coef * vf

        loss = ctx.optimise(cfg, len(y), cfg.epochs, loss_fn)
        stats = ctx.trl_stats(ro, cfg.beta)
        stats["value_loss"] = torch.tensor([float(np.mean(vfs))])
        return Step(None, loss, len(y), len(y), stats)

    def batch_loss(self, q, qm, y, mask, lp_old, adv, v_old, ret):
        """(clipped policy loss, value loss) of one LM minibatch over its valid tokens (token-level PPO)."""
        cfg, ctx = self.config, self.ctx
        m = mask.bool()
        logits, v = ctx.prepared(q, qm, y, mask)
        lp = ctx.token_logprobs(logits, y, mask)
        pg = ppo_clip_loss((lp - lp_old)[m], adv[m], cfg.clip_eps)
        return pg, value_loss(v[m], v_old[m], ret[m], cfg.value_clip or None)

    # ----- diffusion back-end (DDPO) ------------------------------------------------------------
    def diffusion_update(self, q, qm) -> Step:
        """DDPO (Black et al. 2023, https://arxiv.org/abs/2305.13301, §4.3): one trajectory per prompt, the
        (KL-shaped) reward of its image, the per-prompt baseline (advantage standardised within each prompt's
        samples of the batch, or with ``prompt_buffer`` N > 0 DDPO's PerPromptStatTracker over each prompt's last N
        rewards across iterations; optionally clipped to ``adv_clip``), and the clipped surrogate on every stochastic
        denoising step with its trajectory's advantage, by the back-end's AdamW solver. The step's ratio is that of
        its Gaussian densities (``logprob: sum``) or, DDPO's, of their per-pixel means (``mean``: the log-ratio / D);
        the KL shaping uses the trajectory's log-density either way."""
        cfg, ctx = self.config, self.ctx
        pol = ctx.policy
        y = ctx.sample(q, qm)
        ro = ctx.rollout_stats(q, qm, y)
        mask = ro["mask"]
        r = kl_shaped_reward(ro["score"], (ro["lp"] * mask).sum(1).double(), (ro["ref"] * mask).sum(1).double(), cfg.beta)
        if cfg.prompt_buffer:  # DDPO's stat tracker: one process, so the batch is every prompt (DDPO gathers them)
            adv = tracked_prompt_advantage(r, q.reshape(len(q), -1), self.prompt_stats, cfg.prompt_buffer,
                                           cfg.prompt_min_count, scale=cfg.normalize_advantage)
            adv = adv.to(device=r.device, dtype=ro["lp"].dtype)
        else:
            adv = per_prompt_advantage(r, q.reshape(len(q), -1), scale=cfg.normalize_advantage).to(ro["lp"].dtype)
        if cfg.adv_clip:
            adv = adv.clamp(-cfg.adv_clip, cfg.adv_clip)
        lp_old, adv_steps = ro["lp"], adv[:, None].expand_as(ro["lp"])

        def loss_fn(i):
            lp, _ = pol.logprobs(q[i], qm[i], y[i])
            m = mask[i].bool()
            return ppo_clip_loss(step_logratio(lp, lp_old[i], cfg.logprob, pol.dim)[m], adv_steps[i][m], cfg.clip_eps)

        loss = ctx.optimise(cfg, len(y), cfg.epochs, loss_fn)
        return Step(None, loss, len(y), len(y), ctx.trl_stats(ro, cfg.beta))


def step_logratio(lp: torch.Tensor, lp_old: torch.Tensor, logprob: str, dim: int) -> torch.Tensor:
    """The per-step log-ratio of PPO on the image track from step log-densities summed over the ``dim`` pixels:
    their difference (``logprob: sum``) or, as DDPO's per-pixel mean log-probabilities give it, that divided by
    ``dim`` (``mean``)."""
    return (lp - lp_old) / dim if logprob == "mean" else lp - lp_old
