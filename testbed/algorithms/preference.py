"""Algorithms for general (possibly intransitive) preferences on a :class:`PreferenceBandit`.

All act on a tabular softmax policy; r_t(x, y) = P(y ≻ pi_t | x) is the self-play "reward"
(testbed/THEORY.md §E). Every run reports the exploitability of the last iterate pi_t and of the average
iterate (the runner averages pi_0 … pi_{t−1} in probability space, see ``testbed.metrics``).

- ``rebel_pref``: REBEL with a preference target (Gao et al. 2024, §6; self-play as in SPO,
  Swamy et al. 2024): regress (1/eta)[ln pi_θ/pi_t(y) − ln pi_θ/pi_t(y')] onto
  P(y ≻ y') − ½ (``target: pair``) or r_t(y) − r_t(y') (``target: self_play``); exact (population
  weighted least squares) or sampled (N pairs, a Bernoulli preference oracle).
- ``hedge``: self-play Hedge / SPO, pi_{t+1} ∝ pi_t·exp(eta·r_t) (Freund & Schapire 1999).
- ``optimistic_hedge``: pi_{t+1} ∝ pi_t·exp(eta(2r_t − r_{t−1})) (Daskalakis & Panageas 2019).
- ``nash_md``: Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback"),
  pi^mu_t ∝ pi_t^{1−eta·tau}·mu^{eta·tau}, pi_{t+1} ∝ pi^mu_t·exp(eta·P(y ≻ pi^mu_t)), mu = pi_ref
  (or uniform); with the decreasing schedule eta_t = 2/(tau(t+2)) it converges to the regularised equilibrium
  pi*_tau (not to the minimax winner); with a constant eta its fixed point is pi ∝ mu·exp(P·pi^mu/tau), which
  differs from pi*_tau by O(eta).
- ``sppo``: SPPO (Wu et al. 2024, "Self-Play Preference Optimization"), regress ln(pi_θ/pi_t)(y)
  onto eta·(P(y ≻ pi_t) − ½) with y ~ pi_t (no normaliser: the square loss pins ln Z).
- ``bt_rebel``: the reward-model pipeline: fit Bradley–Terry rewards to comparisons of pi_ref
  pairs (the population MLE, or from a sampled data set), then reward REBEL on them.
- DPO on preference pairs drawn from pi_ref ⊗ pi_ref and labelled by the preference oracle is the one DPO
  (:mod:`testbed.algorithms.dpo`) with ``labels: preference``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import log_softmax, logsumexp, wrightomega

from testbed.algorithms.base import Algorithm, Step, adam_fit, count, items, one_of, positive, take
from testbed.algorithms.preference_draws import draw, estimate_win_rates, labels, responses, win_rate_parts
from testbed.algorithms.stacked_draws import at
from testbed.errors import InputError
from testbed.policies import PairRows, Policy, TabularSoftmax, lstsq_step
from testbed.policies.lstsq_onehot import product_pair_regression
from testbed.problems.preference import PreferenceBandit


def _tabular(policy: Policy, name: str) -> None:
    if not isinstance(policy, TabularSoftmax):
        raise InputError(f"{name} needs a tabular policy (got {type(policy).__name__})")


class _PreferenceAlgorithm(Algorithm):
    problem_kind = "preference"
    report_iterate = "avg"
    problem: PreferenceBandit

    def __init__(self, config, problem, rng: np.random.Generator):
        if not isinstance(problem, PreferenceBandit):
            raise InputError(f"algorithm {self.name!r} needs a preference problem "
                             f"(got {problem.name!r}, a {problem.kind} problem)")
        super().__init__(config, problem, rng)

    @staticmethod
    def draws(config) -> bool:
        return config.mode != "exact"

    @staticmethod
    def batchable(config, kind: str) -> bool:
        """Every preference algorithm updates a stack of tabular policies on a
        :class:`~testbed.problems.PreferenceBatch` (draws: :mod:`testbed.algorithms.preference_draws`)."""
        return kind == "tabular"

    def win_rates(self, policy: Policy) -> np.ndarray:
        """r_t(x, y) = P(y ≻ pi_t | x), shape [X, Y] ([S, X, Y] on a stack)."""
        return self.problem.win_rates(policy.probs())


EXACT = {"mode": ("exact",)}
"""``unread_when`` of the fields only the sampled update reads."""


# ----- REBEL with preferences ---------------------------------------------------------------------
@dataclass
class REBELPrefConfig:
    eta: float = positive(1.0, "step size eta > 0 (the regression target is eta·Δ)")
    target: str = one_of("pair", ("pair", "self_play"), "P(y ≻ y') − ½, or r_t(y) − r_t(y') with r_t(y) = P(y ≻ pi_t)")
    mode: str = one_of("exact", ("exact", "sampled"), "exact population regression, or sampled pairs")
    y_prime: str = one_of("policy", ("policy", "uniform"), "where y' comes from: pi_t (self-play) or uniform")
    pairs: int = items(1000, "sampled: (y, y') pairs per iteration", unread_when=EXACT)
    oracle: str = one_of("bernoulli", ("bernoulli", "probability"), "sampled: a 0/1 preference label, or P itself",
                         unread_when=EXACT)
    opponents: int = items(1, per_item=True,
                           doc="sampled, target self_play: comparisons y vs y'' ~ pi_t per response to estimate r_t",
                           unread_when={"mode": ("exact",), "target": ("pair",)})


class REBELPreference(_PreferenceAlgorithm):
    """REBEL with preferences: regress log-ratio differences onto a preference target (self-play)."""

    name = "rebel_pref"
    Config = REBELPrefConfig

    @staticmethod
    def bound(config) -> str | None:  # exact with y' ~ pi_t is exact Hedge (testbed/THEORY.md §E)
        return "hedge_regret" if config.mode == "exact" and config.y_prime == "policy" else None

    def _log_mu(self, policy: Policy) -> np.ndarray:
        X, Y = self.problem.num_contexts, self.problem.num_actions
        return policy.log_probs() if self.config.y_prime == "policy" else np.full((X, Y), -np.log(Y))

    def exact_targets(self, policy: Policy) -> np.ndarray:
        """The regression target t[x, y, y'] of the population problem."""
        if self.config.target == "pair":
            return self.problem.preferences - 0.5
        r = self.win_rates(policy)
        return r[..., :, None] - r[..., None, :]

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "rebel_pref")
        return self._exact(policy) if self.config.mode == "exact" else self._sampled(policy, rng)

    def _exact(self, policy: TabularSoftmax) -> Step:
        eta, log_pi, log_mu = self.config.eta, policy.log_probs(), self._log_mu(policy)
        with np.errstate(divide="ignore"):  # the pair weights w[x, y, y'] = rho(x)·pi_t(y|x)·mu(y'|x): a product
            log_a = np.log(self.problem.rho)[..., None] + log_pi
        target = eta * self.exact_targets(policy)
        f = product_pair_regression(log_a, log_mu, target)  # exact per context, however small the weights
        resid = f[..., :, None] - f[..., None, :] - target
        w = np.exp(log_a)[..., None] * np.exp(log_mu)[..., None, :]
        loss = np.sum((w * resid**2).reshape(w.shape[:-3] + (-1,)), axis=-1)  # one contiguous sum per member
        return Step(policy.with_params(log_pi + f), (loss if loss.ndim else float(loss)) / eta**2, None)

    def _sampled(self, policy: TabularSoftmax, rng) -> Step:
        cfg, p = self.config, self.problem
        N, Y, k, P = cfg.pairs, p.num_actions, cfg.opponents, p.preferences
        policy_y2 = cfg.y_prime == "policy"
        opponents = win_rate_parts(N, k, cfg.oracle)
        extra = ([("u", N)] if cfg.oracle == "bernoulli" else []) if cfg.target == "pair" else opponents * 2
        d = draw(rng, p, [("x", N), ("u", N), ("u", N) if policy_y2 else ("i", Y, N)] + extra)
        x = d[0]
        y = responses(policy, x, d[1])
        y2 = responses(policy, x, d[2]) if policy_y2 else d[2]
        drawn = 2 * N
        if cfg.target == "pair":
            t = (labels(P, x, y, y2, d[3]) if cfg.oracle == "bernoulli" else at(P, x, y, y2)) - 0.5
            queries = N  # one comparison of y with y' per pair
        else:
            h = 3 + len(opponents)
            t = (estimate_win_rates(policy, P, x, y, k, cfg.oracle, d[3:h])
                 - estimate_win_rates(policy, P, x, y2, k, cfg.oracle, d[h:]))
            drawn += 2 * N * k
            queries = 2 * N * k  # k comparisons of each of y and y' with fresh opponents
        new, fitted = lstsq_step(policy, x, PairRows(y, y2, Y), cfg.eta * t)
        loss = np.mean((fitted / cfg.eta - t) ** 2, axis=-1)
        return Step(new, loss if loss.ndim else float(loss), drawn, queries)


# ----- Hedge / optimistic Hedge ---------------------------------------------------------------------
@dataclass
class HedgeConfig:
    eta: float = positive(0.1, "step size eta > 0")
    mode: str = one_of("exact", ("exact",), "exact r_t = P(y ≻ pi_t) (sampled self-play: rebel_pref, sampled)")


class Hedge(_PreferenceAlgorithm):
    """Self-play Hedge (SPO's exact update): pi_{t+1} ∝ pi_t·exp(eta·P(y ≻ pi_t))."""

    name = "hedge"
    Config = HedgeConfig

    @staticmethod
    def bound(config) -> str | None:
        return "hedge_regret"

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "hedge")
        return Step(policy.with_params(policy.log_probs() + self.config.eta * self.win_rates(policy)), None, None)


class OptimisticHedge(_PreferenceAlgorithm):
    """Optimistic Hedge self-play: pi_{t+1} ∝ pi_t·exp(eta·(2r_t − r_{t−1})), r_{−1} = r_0."""

    name = "optimistic_hedge"
    Config = HedgeConfig
    report_iterate = "last"

    def __init__(self, config, problem, rng):
        super().__init__(config, problem, rng)
        self.previous: np.ndarray | None = None

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "optimistic_hedge")
        g = self.win_rates(policy)
        prev = g if self.previous is None else self.previous
        self.previous = g
        return Step(policy.with_params(policy.log_probs() + self.config.eta * (2 * g - prev)), None, None)


# ----- Nash-MD -----------------------------------------------------------------------------------------
@dataclass
class NashMDConfig:
    tau: float = positive(0.1, "KL regularisation tau > 0 towards mu = pi_ref")
    eta: float = positive(1.0, "schedule constant: step size, eta·tau <= 1", unread_when={"schedule": ("decreasing",)})
    schedule: str = one_of("decreasing", ("decreasing", "constant"), "eta_t = 2/(tau(t+2)) (testbed/THEORY.md §E), or eta")
    mu: str = one_of("ref", ("ref", "uniform"), "the mixture's anchor mu: pi_ref, or uniform")
    mode: str = one_of("exact", ("exact",), "exact update")

    def validate(self, where: str) -> None:
        if self.schedule == "constant" and self.eta * self.tau > 1:
            raise InputError(f"{where}: eta·tau must be <= 1 for the Nash-MD mixture (got {self.eta * self.tau:g})")


class NashMD(_PreferenceAlgorithm):
    """Nash-MD: a mirror-descent step against the geometric mixture of pi_t and mu = pi_ref."""

    name = "nash_md"
    Config = NashMDConfig

    @staticmethod
    def bound(config) -> str | None:
        return "nash_md_kl" if config.schedule == "decreasing" else None
    report_iterate = "last"

    def __init__(self, config, problem, rng):
        super().__init__(config, problem, rng)
        self.t = 0
        self.last_eta: float | None = None
        X, Y = problem.num_contexts, problem.num_actions
        self.log_mu = problem.log_pi_ref if config.mu == "ref" else np.full((X, Y), -np.log(Y))

    def step_size(self, t: int) -> float:
        c = self.config
        return 2.0 / (c.tau * (t + 2)) if c.schedule == "decreasing" else c.eta

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "nash_md")
        eta, tau = self.step_size(self.t), self.config.tau
        self.t += 1
        self.last_eta = eta
        log_mix = log_softmax((1 - eta * tau) * policy.log_probs() + eta * tau * self.log_mu, axis=-1)
        g = self.problem.win_rates(np.exp(log_mix))
        return Step(policy.with_params(log_mix + eta * g), None, None)


# ----- SPPO -----------------------------------------------------------------------------------------------
@dataclass
class SPPOConfig:
    eta: float = positive(1.0, "step size eta > 0 (target eta·(P(y ≻ pi_t) − ½))")
    mode: str = one_of("exact", ("exact", "sampled"), "exact population square loss, or sampled responses")
    samples: int = items(500, "sampled: responses y ~ pi_t per iteration", unread_when=EXACT)
    opponents: int = items(4, per_item=True, doc="sampled: comparisons against y'' ~ pi_t per response to estimate "
                           "P(y ≻ pi_t)", unread_when=EXACT)
    oracle: str = one_of("bernoulli", ("bernoulli", "probability"), "sampled: a 0/1 preference label, or P itself",
                         unread_when=EXACT)
    epochs: int = count(4, "sampled: Adam epochs per batch", unread_when=EXACT)
    minibatch: int = count(64, "sampled: minibatch size", unread_when=EXACT)
    lr: float = positive(0.1, "sampled: Adam learning rate", unread_when=EXACT)


class SPPO(_PreferenceAlgorithm):
    """SPPO: square loss of the log-ratio against eta·(P(y ≻ pi_t) − ½) on y ~ pi_t."""

    name = "sppo"
    Config = SPPOConfig

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        _tabular(policy, "sppo")
        return self._exact(policy) if self.config.mode == "exact" else self._sampled(policy, rng)

    def _exact(self, policy: TabularSoftmax) -> Step:
        """Per context: min over log-probabilities l of sum_y pi_t(y)·(l_y − ln pi_t(y) − eta(r_t(y) − ½))², in
        closed form (:func:`sppo_population`); a stack of problems and policies in one call, bit for bit."""
        shift = self.config.eta * (self.problem.win_rates(policy.probs()) - 0.5)
        new, loss = sppo_population(policy.log_probs(), shift)
        return Step(policy.with_params(new), self.problem.expect(loss), None)

    def _sampled(self, policy: TabularSoftmax, rng) -> Step:
        cfg, p = self.config, self.problem
        d = draw(rng, p, [("x", cfg.samples), ("u", cfg.samples)] + win_rate_parts(cfg.samples, cfg.opponents, cfg.oracle))
        x = d[0]
        y = responses(policy, x, d[1])
        r_hat = estimate_win_rates(policy, p.preferences, x, y, cfg.opponents, cfg.oracle, d[2:])
        lp_t = torch.as_tensor(at(policy.log_probs(), x, y))
        target = torch.as_tensor(cfg.eta * (r_hat - 0.5))

        def loss_fn(theta: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            return sppo_loss(policy.torch_log_prob(theta, take(x, idx), take(y, idx)) - take(lp_t, idx), take(target, idx))

        new, loss = adam_fit(policy, loss_fn, cfg.samples, cfg.epochs, cfg.minibatch, cfg.lr, rng)
        return Step(new, loss, cfg.samples * (1 + cfg.opponents), cfg.samples * cfg.opponents)


def sppo_loss(logratio: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SPPO's loss: mean_i (ln pi_θ(y_i|x_i)/pi_t(y_i|x_i) − eta·(P̂(y_i ≻ pi_t|x_i) − ½))².

    Wu, Sun, Yuan, Ji, Yang, Gu, "Self-Play Preference Optimization for Language Model Alignment",
    2024, https://arxiv.org/abs/2405.00675, eq. (3.6). ``target`` = eta·(P̂ − ½), shape [N] (a stack of seeds:
    [S, N], one loss each).
    """
    if logratio.ndim not in (1, 2) or logratio.shape != target.shape:
        raise ValueError(f"expected tensors of one shape [N] or [S, N], got {tuple(logratio.shape)} and "
                         f"{tuple(target.shape)}")
    return torch.mean((logratio - target) ** 2, dim=-1)


def sppo_population(log_pi: np.ndarray, shift: np.ndarray, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """SPPO's exact step: per row (the last axis), the log-probabilities l minimising
    sum_y pi(y)·(l_y − ln pi(y) − shift_y)², shift = eta·(P(y ≻ pi) − ½), and the minimum (testbed/THEORY.md §E).

    Closed form (stationarity of the Lagrangian, with e^{−W(z)} = W(z)/z), W the Lambert W function:

        l_y = ln pi(y) + shift_y − W(mu·e^{shift_y}),   mu >= 0 the root of  phi(mu) = sum_y pi(y)·W(mu·e^{shift_y}) − mu,

    and the minimum is sum_y pi(y)·W(mu·e^{shift_y})². phi is concave with phi(0) = 0 and phi'(0) = d = sum_y pi·e^shift − 1
    >= 0 (Jensen, as E_pi[shift] = 0), so the positive root is unique. The objective is convex on {sum e^l <= 1},
    which holds the minimiser: this is the global minimum.

    Numerics. The unknown is nu = ln mu, so nothing underflows: W(mu·e^s) is Wright's omega at nu + s (no overflow at
    any eta), and x_y = l_y − ln pi(y) = shift_y − W_y = ln W_y − nu is taken from whichever form rounds less. The root
    is that of psi = phi/mu = sum_y e^{l_y} − 1 = sum_y pi·expm1(x_y), decreasing in nu, with dpsi/dnu =
    −sum_y pi·e^{x_y}·W_y/(1 + W_y); no term of size 1 cancels, so mu's relative error is ~eps·sum_y pi·|shift_y|/d
    (its terms' rounding over the normaliser's size d ~ eta²·Var r/2): ~1e-10 at eta = 1e-6, not 1.
    It is bracketed by ln(d / sum_y pi·e^{2 shift}) (psi is convex in mu: its tangent at 0 bounds it below) and
    ln ln(1 + d) (Jensen on the concave W), and found by Newton's method in nu safeguarded by bisection (rtsafe):
    near-deterministic policies put the root dozens of e-folds below the upper bound, where plain Newton crawls.
    A row whose computed d is <= 0 (E_pi[shift] rounds below 0: a policy at a vertex) takes mu = 0, l = ln pi + shift.
    psi's terms are pi·expm1(x) or, where x > 1, e^{ln pi + x} − pi (the same, with no cancellation), so a response
    whose pi underflows to 0 while pi·e^x does not (huge eta) counts in psi as it does in the bracket's logsumexp.
    Each row stops on its own (a step or half-bracket below 4 ulp of max(1, |nu|), or a refused Newton step below
    1e-8·max(1, |nu|): the rounding floor of psi), so row i of a stack gets bit for
    bit its unstacked result. Leading axes are carried through; returns l and the minimum per row."""
    pi = np.exp(log_pi)
    tol = 4 * np.finfo(float).eps
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        small = np.max(np.abs(shift), axis=-1) < 1
        d_small = np.sum(pi * np.expm1(np.minimum(shift, 1)), axis=-1)
        m0 = np.where(small, np.log1p(d_small), logsumexp(log_pi + shift, axis=-1))  # ln(1 + d), accurate when small
        log_d = np.where(small, np.log(d_small), m0 + np.log(-np.expm1(-m0)))
        active = (m0 > 0) & np.isfinite(log_d)
        hi = np.where(active, np.log(m0), 0.0)
        lo = np.where(active, np.minimum(log_d - logsumexp(log_pi + 2 * shift, axis=-1), hi), 0.0)
        nu = np.where(active, hi, -np.inf)
        dx = dx_old = hi - lo
        for _ in range(max_iter):
            if not active.any():
                break
            w, x = _sppo_terms(nu, shift)
            grown = np.exp(log_pi + x)  # pi·e^x, also where pi underflows to 0 and pi·e^x does not (huge eta)
            psi = np.sum(np.where(x > 1, grown - pi, pi * np.expm1(x)), axis=-1)
            slope = np.sum(grown * w / (1 + w), axis=-1)  # −dpsi/dnu >= 0
            lo, hi = np.where(active & (psi > 0), nu, lo), np.where(active & (psi <= 0), nu, hi)
            step = psi / slope
            ok = (nu + step > lo) & (nu + step < hi) & (np.abs(2 * psi) <= np.abs(dx_old * slope))
            floor = ~ok & (np.abs(step) <= 1e-8 * np.maximum(1.0, np.abs(nu)))  # a tiny step refused: rounding noise
            dx_old = dx
            dx = np.where(ok, step, (hi - lo) / 2)
            nu = np.where(active & ~floor, np.where(ok, nu + step, (lo + hi) / 2), nu)
            active &= (np.abs(dx) > tol * np.maximum(1.0, np.abs(nu))) & ~floor
        if active.any():
            raise RuntimeError(f"SPPO's exact step: the root did not settle in {max_iter} steps")
        w, x = _sppo_terms(nu, shift)
    return log_pi + x, np.sum(pi * w * w, axis=-1)


def _sppo_terms(nu: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W_y = W(e^{nu + shift_y}) and x_y = shift_y − W_y = ln W_y − nu, in the form with the smaller rounding."""
    lmu = nu[..., None]
    w = wrightomega(lmu + shift)
    lw = np.log(w)
    use_log = (np.abs(lw) + np.abs(lmu) < np.abs(shift) + w) & (w >= np.finfo(float).tiny)  # subnormal W: few digits
    x = np.where(use_log, lw - lmu, shift - w)
    return w, x


# ----- the reward-model pipeline: Bradley–Terry fit, then REBEL -------------------------------------
from testbed.algorithms.preference_rm import BTREBEL  # noqa: E402  (it builds on the above)

PREFERENCE_ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (REBELPreference, Hedge, OptimisticHedge, NashMD, SPPO, BTREBEL)
}


def ipo_target_log(log_ref: np.ndarray, pref: np.ndarray, tau: float, mu: np.ndarray | None, law: str = "distinct",
                   tol: float = 1e-13, iterations: int = 10_000) -> np.ndarray | None:
    """ln of IPO's exact target. Per ordered pair with y winning w.p. p, the expected IPO loss is
    (h(y) - h(y') - (2p - 1)/(2 tau))² + const, so the population minimiser solves the weighted least
    squares over the pair law P(y, y') (:func:`~testbed.datasets.pair_probs` of mu), pi ∝ pi_ref·exp(h).
    ``mu`` None (online: pairs from pi_t itself): the fixed point pi = pi_ref·exp(h(pi)), by damped
    iteration from pi_ref; None if it does not converge."""
    from testbed.policies import log_softmax

    t = (2 * pref - 1) / (2 * tau)

    def solve(m: np.ndarray) -> np.ndarray:
        h = product_pair_regression(*_pair_law_factors(m, law), t)
        return log_softmax(log_ref + h)

    if mu is not None:
        return solve(mu)
    log_pi = np.asarray(log_ref, dtype=np.float64)
    for _ in range(iterations):
        new = log_softmax(0.5 * log_pi + 0.5 * solve(np.exp(log_pi)))
        if np.max(np.abs(np.exp(new) - np.exp(log_pi))) < tol:
            return new
        log_pi = new
    return None


def _pair_law_factors(mu: np.ndarray, law: str) -> tuple[np.ndarray, np.ndarray]:
    """ln a, ln b with P(y, y' | x) = a_y·b_y' for y != y' (:func:`~testbed.datasets.pair_probs`; the diagonal carries
    no preference): ``independent`` a = b = mu; ``distinct`` a_y = mu_y / sum_{y' != y} mu_y', b = mu, or, in a
    context where mu puts all mass on one response, a = mu and b uniform (y' uniform over the others)."""
    with np.errstate(divide="ignore"):
        log_mu = np.log(mu)
        if law == "independent":
            return log_mu, log_mu
        rest = np.sum(mu[..., None, :] * (1.0 - np.eye(mu.shape[-1])), axis=-1)  # sum_{y' != y} mu_y', as distinct_pair_probs
        one = np.any(rest <= 0, axis=-1, keepdims=True)
        log_a = np.where(one, log_mu, log_mu - np.log(rest))
        return log_a, np.where(one, -np.log(mu.shape[-1] - 1.0), log_mu)
