"""REBEL: REgression to RElative REward Based RL (Gao et al., NeurIPS 2024, arXiv 2404.16767).

Each iteration regresses the difference of log-ratios onto the difference of rewards:

    theta_{t+1} = argmin_theta E_{x~rho, y~pi_t, y'~mu} ( (1/eta)[ln pi_theta(y|x)/pi_t(y|x)
                      - ln pi_theta(y'|x)/pi_t(y'|x)] - (r(x,y) - r(x,y')) )²

with KL regularisation folded into the reward, r <- r - beta·(ln pi_t - ln pi_ref), as in the
official code. Modes:

- ``exact``: the population problem. Tabular: its minimiser over all logit tables (any
  full-support mu) is pi_{t+1} ∝ pi_t·exp(eta·r) — mirror descent (testbed/THEORY.md §C). Log-linear:
  the weighted normal equations E[ΔφΔφᵀ]·delta = eta·E[Δφ·Δr], solved (min-norm) by
  :func:`testbed.policies.natural.natural_step` from centred quantities; with mu = pi_t this is
  exactly NPG (the same system, the same arithmetic).
- ``sampled``: N pairs per iteration, the regression solved by least squares (tabular/log-linear,
  min-norm) or by K epochs of minibatch Adam on :func:`testbed.losses.rebel_loss` (any
  differentiable policy).
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
    grad_accum_field,
    items,
    minibatch_field,
    mirror_step,
    no_overflow,
    nonneg,
    one_of,
    positive,
    take,
)
from testbed.algorithms.stacked_draws import (
    at,
    base_contexts,
    cdf_columns,
    cdf_draw,
    contexts_from_uniforms,
    flat_rows,
    table_draws,
    with_noise,
)
from testbed.errors import InputError
from testbed.losses import kl_shaped_reward, rebel_loss, rebel_loss_official
from testbed.policies import (
    LogLinear,
    PairRows,
    Policy,
    TabularSoftmax,
    linear_logits,
    lstsq_step,
    score_features,
)
from testbed.policies.natural import natural_step
from testbed.problems import TabularBandit

Y_PRIME = ("policy", "uniform", "ref", "offline")
ADAM_ONLY = {"mode": ("exact",), "solver": ("lstsq",)}
"""The fields only the Adam solver reads (its loss and optimiser): unread by the exact update and by least squares."""


@dataclass
class REBELConfig:
    eta: float = positive(1.0, "step size eta > 0 (the regression target is eta·Δr; official: 1)")
    beta: float = nonneg(0.0, "KL coefficient: reward shaping r - beta·(ln pi_t - ln pi_ref) (LM default: the "
                              "official 0.05)", lm=0.05)
    mode: str = one_of("exact", ("exact", "sampled"), "exact population update or sampled pairs (LM: sampled)",
                       lm="sampled")
    pairs: int = items(1000, "sampled: (y, y') pairs per iteration (2 responses each); LM: train.batch prompts",
                       tracks=BANDIT, unread_when={"mode": ("exact",)})
    y_prime: str = one_of("policy", Y_PRIME, "where y' comes from: pi_t (official), uniform, pi_ref, or a fixed "
                                             "offline set (LM: policy or ref)")
    offline_size: int = count(4, "y_prime=offline: responses per context, drawn once from pi_ref", tracks=BANDIT,
                              unread_when={"y_prime": ("policy", "uniform", "ref")})
    solver: str = one_of("lstsq", ("lstsq", "adam"), "sampled: exact least squares, or Adam on the loss (LM: "
                                                     "AdamW through accelerate)", lm="adam",
                         unread_when={"mode": ("exact",)})
    epochs: int = count(4, "adam: epochs per batch (reshuffled), as in the official code", unread_when=ADAM_ONLY)
    minibatch: int = minibatch_field(64, "adam: pairs per optimiser step", unread_when=ADAM_ONLY)
    grad_accum: int = grad_accum_field(unread_when=ADAM_ONLY)
    lr: float = positive(0.05, "adam: learning rate (LM: train.lr)", tracks=BANDIT, unread_when=ADAM_ONLY)
    form: str = one_of("paper", ("paper", "official"), "loss form of the Adam solver: the paper's ((1/eta)Δlogratio - "
                       "Δr)² or the official code's (Δlogratio - eta·Δr)² (LM default)", lm="official",
                       unread_when=ADAM_ONLY)

    def validate(self, where: str) -> None:
        if self.beta > 0 and self.eta * self.beta > 1:
            raise InputError(f"{where}: eta·beta must be <= 1 for the KL-shaped update (got {self.eta * self.beta:g})")


class REBEL(Algorithm):
    name = "rebel"
    Config = REBELConfig
    summary = "regress Δ ln(pi_theta/pi_t) of two responses onto eta·Δr (Gao et al. 2024)"
    tracks = ("bandit", "lm", "diffusion")
    maturity = "verified against theory"
    tests = ("test_tabular_rebel_is_mirror_descent", "test_loglinear_rebel_with_y_prime_from_pi_t_is_npg",
             "test_monotone_improvement_and_mirror_descent_bound", "test_kl_regularised_contraction",
             "test_sampled_rebel_error_shrinks_like_inverse_sqrt_n_linear",
             "test_one_token_lm_update_equals_the_tabular_update[rebel]",
             "test_one_step_diffusion_rebel_update_equals_the_bandit_update")

    @staticmethod
    def sequences_per_item(config) -> int:
        return 2

    @classmethod
    def generated_per_prompt(cls, config) -> int:
        return 2 if config.y_prime == "policy" else 1  # both from pi_t in one call (lm_update), else one call each

    @staticmethod
    def bound(config) -> str | None:
        return "mirror_descent" if config.mode == "exact" and not config.beta else None

    @staticmethod
    def check_track(config, track: str) -> str | None:
        if track in ("lm", "diffusion") and (config.mode != "sampled" or config.solver != "adam"
                                             or config.y_prime not in ("policy", "ref")):
            return "REBEL on an LM is sampled pairs with the AdamW solver (mode: sampled, solver: adam; y_prime: policy or ref)"
        return None

    def __init__(self, config: REBELConfig, problem: TabularBandit, rng: np.random.Generator):
        super().__init__(config, problem, rng)
        if self.ctx is not None:
            return
        X = problem.num_contexts
        self.offline = None
        if config.y_prime == "offline":  # a fixed set of responses per context, drawn once from pi_ref
            ref = TabularSoftmax(problem.log_pi_ref)
            self.offline = ref.sample(rng, np.repeat(np.arange(X), config.offline_size)).reshape(X, config.offline_size)
        self._all_rho_positive = bool(np.all(problem.rho > 0))
        self._no_overflow = no_overflow(config.eta, problem.rewards)
        self._adam: dict = {}

    @staticmethod
    def draws(config: REBELConfig) -> bool:
        return config.mode != "exact" or config.y_prime == "offline"  # offline: its responses drawn at construction

    @staticmethod
    def batchable(config: REBELConfig, kind: str) -> bool:
        return kind in ("tabular", "loglinear") and config.y_prime != "offline"

    @staticmethod
    def check_policy(config: REBELConfig, kind: str) -> str | None:
        if kind in ("tabular", "loglinear") or (config.mode == "sampled" and config.solver == "adam"):
            return None
        return "exact and least-squares REBEL need a tabular or loglinear policy; use mode: sampled, solver: adam"

    def mu(self, policy: Policy) -> np.ndarray:
        """The distribution of y' as a table [X, Y]."""
        kind = self.config.y_prime
        if kind == "policy":
            return policy.probs()
        if kind == "uniform":
            return np.full(self.problem.rewards.shape, 1.0 / self.problem.num_actions)
        if kind == "ref":
            return self.problem.pi_ref
        X, Y = self.problem.rewards.shape
        counts = np.zeros((X, Y))
        np.add.at(counts, (np.repeat(np.arange(X), self.offline.shape[1]), self.offline.ravel()), 1.0)
        return counts / self.offline.shape[1]

    def shaped_rewards(self, log_pi: np.ndarray) -> np.ndarray:
        r = self.problem.rewards
        return r if self.config.beta == 0 else kl_shaped_reward(r, log_pi, self.problem.log_pi_ref, self.config.beta)

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        if self.config.mode == "exact":
            return self._exact(policy)
        return self._sampled(policy, rng)

    # ----- exact (population) ----------------------------------------------------------------
    def _exact(self, policy: Policy) -> Step:
        eta = self.config.eta
        if isinstance(policy, TabularSoftmax):
            log_pi = policy.log_probs()
            new = mirror_step(log_pi, eta, self.shaped_rewards(log_pi), self._no_overflow)
            if not self._all_rho_positive:  # contexts never drawn get no data: min-norm leaves them
                new = np.where(self.problem.rho[..., None] > 0, new, log_pi)
            return Step(policy.with_params(new), 0.0, None)
        if isinstance(policy, LogLinear):
            pi = policy.probs()
            mu = pi if self.config.y_prime == "policy" else self.mu(policy)
            delta, loss = linear_population_regression(self.problem.rho, policy.features, pi, mu,
                                                       self.shaped_rewards(policy.log_probs()), eta)
            return Step(policy.with_params(policy.params + delta), loss, None)
        raise InputError(f"REBEL mode 'exact' needs a tabular or log-linear policy (got {type(policy).__name__})")

    # ----- sampled ---------------------------------------------------------------------------
    def sample_pairs(self, policy: Policy, rng, problem: TabularBandit | None = None):
        """x ~ rho, y ~ pi_t, y' ~ mu; rewards (KL-shaped); pi_t log-probs computed once. For a stack
        (``rng`` a list of generators, ``problem`` a ProblemBatch) each member's random numbers come
        from its own generator in the order one seed draws them, and the rest (inverse CDFs, log-probs,
        rewards) runs on the whole stack: every member gets its own run's samples bit for bit."""
        p = problem or self.problem
        cfg, N, Y = self.config, self.config.pairs, p.num_actions
        stacked = isinstance(rng, list)
        gens, members = (rng, p.members) if stacked else ([rng], [p])
        raw = [self._raw_draws(g, m, N, Y) for g, m in zip(gens, members)]
        noisy = any(a[3] is not None for a in raw)
        if noisy:  # a member without noise in a stack with some: zeros
            raw = [a if a[3] is not None else a[:3] + (np.zeros(N), np.zeros(N)) for a in raw]
        x, u, v, e, e2 = (a[0] if not stacked else None if a[0] is None else np.stack(a) for a in zip(*raw))
        if x.dtype.kind == "f":  # contexts drawn as uniforms: the problem's inverse CDF, on the whole stack
            x = contexts_from_uniforms(p.rho, x)
        kind = cfg.y_prime
        if kind == "policy":
            (y, y2), (lp, lp2) = table_draws(policy, x, [u, v], p.num_contexts)
        else:
            if kind == "ref":
                ref = cdf_columns(np.cumsum(np.exp(TabularSoftmax(p.log_pi_ref).params), axis=-1))
                y2 = cdf_draw(ref, flat_rows(x, p.num_contexts), v)
            else:
                y2 = v if kind == "uniform" else self.offline[x, v]
            (y,), (lp, lp2) = table_draws(policy, x, [u], p.num_contexts, known=(y2,))
        r, r2 = at(p.rewards, x, y), at(p.rewards, x, y2)
        if noisy:
            r, r2 = with_noise(p, r, e), with_noise(p, r2, e2)
        if cfg.beta > 0:
            r = kl_shaped_reward(r, lp, at(p.log_pi_ref, x, y), cfg.beta)
            r2 = kl_shaped_reward(r2, lp2, at(p.log_pi_ref, x, y2), cfg.beta)
        return x, y, y2, lp, lp2, r, r2

    def _raw_draws(self, rng: np.random.Generator, p: TabularBandit, N: int, Y: int):
        """One seed's random numbers, in the order of its draws: contexts, y, y' (a uniform, or an index),
        the reward noise of y and of y' (None when the problem has none: nothing drawn)."""
        kind = self.config.y_prime
        if base_contexts(p):
            # the uniforms of the contexts' inverse CDF, of y and (y' from a policy) of y': the numbers of N-long
            # draws one after the other, in one call; the contexts are found on the whole stack (_contexts)
            w = rng.random((3 if kind in ("policy", "ref") else 2) * N)
            x, u, v = w[:N], w[N:2 * N], w[2 * N:]
        else:
            x, u = p.sample_contexts(rng, N), rng.random(N)
            v = rng.random(N) if kind in ("policy", "ref") else None
        if kind not in ("policy", "ref"):
            v = rng.integers(Y if kind == "uniform" else self.offline.shape[1], size=N)
        if p.noise_std <= 0:
            return x, u, v, None, None
        return x, u, v, rng.standard_normal(N), rng.standard_normal(N)

    def _sampled(self, policy: Policy, rng) -> Step:
        cfg = self.config
        x, y, y2, lp, lp2, r, r2 = self.sample_pairs(policy, rng, self.problem)
        if cfg.solver == "lstsq":
            if isinstance(policy, TabularSoftmax):  # e_y - e_y': counted from the indices, no N x Y array
                rows = PairRows(y, y2, policy.params.shape[-1])
            else:
                rows = score_features(policy, x, y) - score_features(policy, x, y2)
            new, fitted = lstsq_step(policy, x, rows, cfg.eta * (r - r2))
            loss = np.mean((fitted / cfg.eta - (r - r2)) ** 2, axis=-1)
            return Step(new, loss if loss.ndim else float(loss), 2 * cfg.pairs, 2 * cfg.pairs)
        t = {k: torch.as_tensor(v) for k, v in dict(lp=lp, lp2=lp2, r=r, r2=r2).items()}

        def loss_fn(theta: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            xi = take(x, idx)
            new1, new2 = policy.torch_log_prob_of(theta, xi, take(y, idx), take(y2, idx))
            ratio, ratio2 = new1 - take(t["lp"], idx), new2 - take(t["lp2"], idx)
            return self.loss_fn(ratio, ratio2, take(t["r"], idx), take(t["r2"], idx), cfg.eta)

        new, loss = adam_fit(policy, loss_fn, cfg.pairs, cfg.epochs, cfg.minibatch, cfg.lr, rng, self._adam)
        return Step(new, loss, 2 * cfg.pairs, 2 * cfg.pairs)


    # ----- LM back-end ------------------------------------------------------------------------
    @property
    def loss_fn(self):
        return rebel_loss_official if self.config.form == "official" else rebel_loss

    def lm_update(self, q, qm) -> Step:
        """Two responses per prompt (both from pi_t in one generate call, or y' from pi_ref), the KL-shaped
        score, and the regression of Δ ln(pi_theta/pi_t) onto eta·Δr by the back-end's AdamW solver."""
        cfg, ctx = self.config, self.ctx
        pol, B = ctx.policy, len(q)
        q2, qm2 = torch.cat([q, q]), torch.cat([qm, qm])
        if cfg.y_prime == "policy":
            y = ctx.sample(q2, qm2)
        else:
            y = torch.cat([ctx.sample(q, qm), ctx.sample(q, qm, ref=True)])
        y1, y2 = y[:B], y[B:]
        single = ctx.single_step(cfg, B, cfg.epochs)
        ro = ctx.rollout_stats(q2, qm2, y, policy_logprobs=not single)
        ref = ro["ref"].sum(1)
        loss_f = self.loss_fn
        if single:
            # one optimiser step: ln pi_t = the detached log-probs of its own forward (saves a forward pass)
            ro["lp"] = torch.zeros_like(ro["ref"])

            def loss_fn(i):
                j = torch.cat([i, i + B])
                lp, _ = pol.logprobs(q2[j], qm2[j], y[j])
                new = lp.sum(1)
                ro["lp"][j] = lp.detach()
                lp_t = new.detach()
                r = kl_shaped_reward(ro["score"][j], lp_t, ref[j], cfg.beta)
                n = len(i)
                return loss_f(new[:n] - lp_t[:n], new[n:] - lp_t[n:], r[:n], r[n:], cfg.eta)
        else:
            lp_t = ro["lp"].sum(1)  # ln pi_t, once per batch
            r = kl_shaped_reward(ro["score"], lp_t, ref, cfg.beta)
            lp1, lp2, r1, r2 = lp_t[:B], lp_t[B:], r[:B], r[B:]

            def loss_fn(i):
                new = pol.seq_logprob(torch.cat([q[i], q[i]]), torch.cat([qm[i], qm[i]]), torch.cat([y1[i], y2[i]]))
                return loss_f(new[:len(i)] - lp1[i], new[len(i):] - lp2[i], r1[i], r2[i], cfg.eta)

        loss = ctx.optimise(cfg, B, cfg.epochs, loss_fn)
        return Step(None, loss, 2 * B, 2 * B, ctx.trl_stats(ro, cfg.beta))

    def batch_loss(self, q, qm, y1, y2, lp1, lp2, r1, r2) -> torch.Tensor:
        """The LM loss of one minibatch at the current parameters (for tests)."""
        pol = self.ctx.policy
        return self.loss_fn(pol.seq_logprob(q, qm, y1) - lp1, pol.seq_logprob(q, qm, y2) - lp2, r1, r2, self.config.eta)



def linear_population_regression(rho, phi, pi, mu, r, eta):
    """Solve min_delta E_{x~rho, y~pi, y'~mu}((1/eta)·deltaᵀΔφ - Δr)² (minimum norm).

    The normal equations A·delta = eta·b, A = E[ΔφΔφᵀ], b = E[Δφ·Δr], are solved by
    :func:`testbed.policies.natural.natural_step` (weight-free when the fit is exact, else on the
    centred square-root-weighted rows: no cancellation near determinism). Pass ``mu is pi`` for
    y' ~ pi_t (the NPG system). Returns delta and the loss at delta, computed from the residual
    e = deltaᵀφ/eta - r as E[(e(y) - e(y'))²] (no cancellation). Leading axes (a stack of problems
    and policies) are carried through: one delta and loss each.
    """
    delta = natural_step(rho, phi, r, pi, mu, eta)
    e = linear_logits(phi, delta) / eta - r
    ep, ep2 = np.sum(pi * e, -1), np.sum(pi * e * e, -1)
    em, em2 = np.sum(mu * e, -1), np.sum(mu * e * e, -1)
    loss = np.sum(rho * (ep2 + em2 - 2 * ep * em), axis=-1)
    return delta, np.maximum(loss, 0.0) if loss.ndim else max(float(loss), 0.0)
