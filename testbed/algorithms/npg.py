"""Natural policy gradient: theta_{t+1} = theta_t + eta·F(theta_t)⁺ ∇J(theta_t).

F = E_x E_{y~pi} ∇ln pi ∇ln piᵀ (Kakade 2001; Agarwal, Kakade, Lee, Mahajan, JMLR 2021).
With beta > 0 the objective is J_beta = J - beta·KL(pi || pi_ref), whose gradient uses the shaped
reward q = r - beta·(ln pi_t - ln pi_ref) (Cen et al. 2021's regularised NPG).

- ``exact``: tabular softmax has F⁺∇J = q - mean_y q per context with rho(x) > 0 (derived; the
  test checks it against an explicit Fisher pseudo-inverse), so pi_{t+1} ∝ pi_t·exp(eta·q);
  log-linear solves F·delta = eta·∇J (∇J with the per-context mean reward as baseline) by
  :func:`testbed.policies.natural.natural_step`: exact in the realisable case however
  deterministic pi_t is, else on the centred square-root-weighted rows (documented cut-off).
- ``sampled``: N responses; rows g_i = ∇ln pi(y_i|x_i) (tabular: the closed form of
  :mod:`testbed.policies.lstsq_onehot` from per-context counts). The sample Fisher F̂ and gradient ĝ are
  the within-context sample covariances of g with itself and with q (a per-context baseline;
  E g = 0, so both are consistent), and F̂⁺ĝ is the min-norm least-squares fit of q on the
  scores with a free intercept per context — Kakade's compatible-function-approximation view.
  Without the baseline the raw-moment estimate blows up as pi_t becomes near-deterministic.
  ``damping`` lam > 0 solves (F̂ + lam·s·I)·delta = ĝ with s the mean eigenvalue of F̂ (scale-free,
  as TRPO's damped conjugate gradient); the default 0 is the minimum-norm solution: tabular in closed
  form (its non-zero eigenvalues are >= 1, none is cut), log-linear by the pseudo-inverse of the
  rows with numpy lstsq's cut-off (singular values below eps·max(N, d) of the largest treated as zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from testbed.algorithms.base import Algorithm, Step, items, mirror_step, no_overflow, nonneg, one_of, per_seed, positive
from testbed.algorithms.stacked_draws import at, policy_samples
from testbed.errors import InputError
from testbed.losses import kl_shaped_reward
from testbed.policies import LogLinear, Policy, TabularSoftmax, lstsq_step, mean_score_features, score_features
from testbed.policies.lstsq_onehot import npg_step
from testbed.policies.natural import natural_step


@dataclass
class NPGConfig:
    eta: float = positive(1.0, "step size eta > 0")
    beta: float = nonneg(0.0, "KL coefficient of J_beta = J - beta·KL(pi || pi_ref)")
    mode: str = one_of("exact", ("exact", "sampled"), "exact Fisher, or sample Fisher and gradient")
    samples: int = items(1000, "sampled: responses per iteration", unread_when={"mode": ("exact",)})
    damping: float = nonneg(0.0, "sampled: damping lam, solves (F̂ + lam·s·I)·delta = ĝ, s = mean eigenvalue (0: pinv)",
                            unread_when={"mode": ("exact",)})

    def validate(self, where: str) -> None:
        if self.beta > 0 and self.eta * self.beta > 1:
            raise InputError(f"{where}: eta·beta must be <= 1 for regularised NPG (got {self.eta * self.beta:g})")


class NPG(Algorithm):
    name = "npg"

    @staticmethod
    def bound(config) -> str | None:
        return "mirror_descent" if config.mode == "exact" and not config.beta else None
    summary = "natural policy gradient: theta + eta·F⁺∇J (Kakade 2001); exact or with a sampled Fisher"
    maturity = "verified against theory"
    tests = ("test_tabular_npg_closed_form_equals_fisher_pseudo_inverse", "test_loglinear_rebel_with_y_prime_from_pi_t_is_npg",
             "test_sampled_npg_is_consistent")
    Config = NPGConfig

    def __init__(self, config: NPGConfig, problem, rng: np.random.Generator):
        super().__init__(config, problem, rng)
        self._all_rho_positive = bool(np.all(problem.rho > 0))
        self._no_overflow = no_overflow(config.eta, problem.rewards)

    @staticmethod
    def draws(config: NPGConfig) -> bool:
        return config.mode != "exact"

    @staticmethod
    def batchable(config: NPGConfig, kind: str) -> bool:
        return kind in ("tabular", "loglinear")

    @staticmethod
    def check_policy(config: NPGConfig, kind: str) -> str | None:
        return None if kind in ("tabular", "loglinear") else "NPG needs a tabular or loglinear policy"

    def shaped(self, r, log_pi, log_ref):
        return r if self.config.beta == 0 else kl_shaped_reward(r, log_pi, log_ref, self.config.beta)

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        return self._exact(policy) if self.config.mode == "exact" else self._sampled(policy, rng)

    def _exact(self, policy: Policy) -> Step:
        p, eta = self.problem, self.config.eta
        log_pi = policy.log_probs()
        q = self.shaped(p.rewards, log_pi, p.log_pi_ref)
        if isinstance(policy, TabularSoftmax):
            new = mirror_step(log_pi, eta, q - q.mean(axis=-1, keepdims=True), self._no_overflow)
            if not self._all_rho_positive:  # F is zero on contexts with rho(x) = 0: no step there
                new = np.where(p.rho[..., None] > 0, new, log_pi)
            return Step(policy.with_params(new), None, None)
        if isinstance(policy, LogLinear):
            delta = natural_step(p.rho, policy.features, q, np.exp(log_pi), None, eta)
            return Step(policy.with_params(policy.params + delta), None, None)
        raise InputError(f"NPG mode 'exact' needs a tabular or log-linear policy (got {type(policy).__name__})")

    def _draw(self, policy: Policy, rng: np.random.Generator, problem) -> tuple[np.ndarray, ...]:
        """x ~ rho, y ~ pi_t and the (KL-shaped) sampled reward q of one seed."""
        N = self.config.samples
        x = problem.sample_contexts(rng, N)
        y = policy.sample(rng, x)
        lp = policy.log_probs_at(x)[np.arange(N), y]
        return x, y, self.shaped(problem.sample_rewards(rng, x, y), lp, problem.log_pi_ref[x, y])

    def _sampled(self, policy: Policy, rng) -> Step:
        cfg, p = self.config, self.problem
        drawn = policy_samples(policy, rng, p, cfg.samples)
        if drawn is None:  # a replaced draw (a subclass, a conformance view): seed by seed
            x, y, q = per_seed(self._draw, policy, rng, p)
        else:
            x, y, r, lp = drawn
            q = r if cfg.beta == 0 else self.shaped(r, lp, at(p.log_pi_ref, x, y))
        if isinstance(policy, TabularSoftmax):  # one-hot scores: the closed form from counts
            new = npg_step(policy, x, y, cfg.eta * q, ridge=cfg.damping)
        else:
            scores = score_features(policy, x, y) - mean_score_features(policy, x)
            new, _ = lstsq_step(policy, x, scores, cfg.eta * q, context_intercept=True, ridge=cfg.damping)
        return Step(new, None, cfg.samples, cfg.samples)

