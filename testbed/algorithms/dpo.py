"""DPO and IPO on bandits: offline, population (infinite data) and online/iterative.

    DPO: -ln sigma(beta·[h(y_w) - h(y_l)]),   IPO: (h(y_w) - h(y_l) - 1/(2·tau))²,   h = ln pi_theta/pi_ref

(Rafailov et al. 2023; Azar et al. 2024; for IPO the ``beta`` field is tau, as in TRL.)

- ``offline``: a fixed dataset of ``pairs`` rows drawn once from mu (pi_ref or uniform) and labelled
  by the preference oracle (or loaded from a .npz/.jsonl file); each iteration is ``epochs``
  passes of minibatch Adam over it.
- ``population``: the expected loss under the law of the offline sampler (its infinite-data limit):
  x ~ rho, y ~ mu, y' ~ mu conditioned on y' != y (``distinct_pair_probs``), labelled with
  p*(y ≻ y'), so the chosen/rejected row (y, y') has weight rho·(P(y, y') + P(y', y))·p*(y ≻ y')
  — or, given ``dataset``, over that dataset's empirical
  distribution; each iteration is one Newton step with the exact Hessian (|eigenvalues|,
  pseudo-inverse) and Armijo backtracking, since the loss is deterministic: quadratic convergence
  to pi*_beta, no drift at a stationary point (Adam's scale-free steps amplify rounding-level
  gradients there), and steady progress where DPO's loss saturates under deterministic
  preferences (first-order steps and L-BFGS stall as the gradient decays like exp(-beta·margin)).
  ``optimizer: adam`` takes ``epochs`` full-batch Adam steps instead. Under Bradley–Terry with
  full coverage the minimiser is pi*_beta (testbed/THEORY.md §D); with deterministic preferences DPO has
  no finite minimiser.
- ``online``: each round draws ``pairs`` pairs from pi_t (y' != y), queries the oracle once per
  pair and takes ``epochs`` passes of minibatch Adam (the iterative/online DPO of Guo et al. 2024).
Adam's moments persist across iterations.

Pairs (``pair_law``): y' ~ mu given y' != y (``distinct``), or y, y' ~ mu independently (``independent``: a tie
carries no preference; the population loss is then over the law of (x, y, y') given y' != y). ``labels:
preference`` is DPO on a preference problem (what was ``dpo_pref``): the oracle is the problem's own
P[x, y, y'], with the preference family's conventions — a tabular policy, a fresh Adam each iteration,
and an offline data set counted at update 1 (as ``bt_rebel``'s). ``optimizer:
gd`` (population) takes one gradient step of size ``lr`` per iteration; like every solver it reports the loss at the
updated policy.
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
    adam_fit,
    count,
    flag,
    grad_accum_field,
    items,
    minibatch_field,
    nonneg,
    one_of,
    path,
    per_seed,
    positive,
    take,
)
from testbed.algorithms.diffusion_dpo import diffusion_dpo_update
from testbed.algorithms.preference import ipo_target_log
from testbed.algorithms.stacked_draws import flat_rows, online_pairs
from testbed.datasets import LABELS, PAIR_LAWS, PreferenceDataset, PreferenceOracle, load_preferences, pair_probs, sample_distinct
from testbed.errors import InputError
from testbed.losses import dpo_loss, ipo_loss
from testbed.policies import Policy
from testbed.problems import TabularBandit


@dataclass
class DPOConfig:
    beta: float = positive(0.1, "KL strength beta > 0 (IPO: tau)")
    loss: str = one_of("dpo", ("dpo", "ipo", "diffusion"), "DPO (logistic) or IPO (squared) loss; diffusion: "
                       "Diffusion-DPO (Wallace et al. 2023: denoising errors at a sampled timestep, beta·T)")
    mode: str = one_of("online", ("offline", "online", "population"), "fixed dataset, fresh pairs from pi_t, or "
                       "infinite data (LM default: offline; LM: offline or online)", lm="offline")
    pairs: int = items(250, "online: pairs per round; offline: dataset size (LM: train.batch)", tracks=BANDIT,
                       unread_when={"mode": ("population",)})
    mu: str = one_of("ref", ("ref", "uniform"), "offline/population: the policy that proposes pairs", tracks=BANDIT,
                     unread_when={"mode": ("online",)})
    labels: str = one_of("bt", LABELS, "oracle: Bradley–Terry on r, deterministic (better wins), a tensor, or "
                         "preference (a preference problem's own P)", tracks=BANDIT)
    pair_law: str = one_of("distinct", PAIR_LAWS, "pairs from mu (online: pi_t): y' given y' != y, or y, y' "
                           "independently (ties carry no preference)", tracks=BANDIT)
    temperature: float = positive(1.0, "bt: p(y ≻ y') = sigma((r(y) - r(y'))/temperature)", tracks=BANDIT,
                                  unread_when={"labels": tuple(v for v in LABELS if v != "bt")})
    preferences: str = path("labels=tensor: .npz with array 'preferences' [X, Y, Y]", tracks=BANDIT,
                            unread_when={"labels": tuple(v for v in LABELS if v != "tensor")})
    dataset: str = path("offline/population: a .npz/.jsonl dataset (prompt, chosen, rejected) to train on; LM: "
                        "a JSONL of texts (required offline)")
    optimizer: str = one_of("newton", ("newton", "adam", "gd"), "population: damped Newton step, full-batch Adam "
                            "(lr), or one gradient step of size lr", tracks=BANDIT,
                            unread_when={"mode": ("offline", "online")})
    lr: float = positive(0.05, "Adam learning rate (LM: train.lr)", tracks=BANDIT)
    epochs: int = count(1, "passes over the pairs per iteration (offline/online)")
    minibatch: int = minibatch_field(64, "pairs per optimiser step (population: the full batch)",
                                     unread_when={"mode": ("population",)})
    grad_accum: int = grad_accum_field()
    logprob_temperature: float = nonneg(0.0, "LM: temperature of DPO's log-probs (0: the sampling temperature; TRL "
                                             "and the DPO paper: 1)", tracks=LM)
    ipo_length_normalize: bool = flag(True, "LM, loss: ipo: divide each response's log-ratio by its length (tokens up "
                                            "to and including the first EOS) before (h_w - h_l - 1/(2·tau))², as "
                                            "TRL's loss_type ipo; false: summed sequence log-ratios (the paper's "
                                            "form; a bandit response is one token, where both agree)",
                                      tracks=LM, not_on=DIFFUSION, diffusion=False, unread_when={"loss": ("dpo",)})

    def validate(self, where: str) -> None:
        if self.labels == "tensor" and not self.preferences:
            raise InputError(f"{where}.preferences: labels: tensor needs a .npz file with array 'preferences'")


def ref_log_prob(log_ref: torch.Tensor, x: np.ndarray, y: np.ndarray) -> torch.Tensor:
    """ln pi_ref(y_i|x_i) from the table [X, Y] (or a stack's, [S, X, Y] with x, y [S, N]): one flat gather."""
    X, Y = log_ref.shape[-2:]
    return log_ref.reshape(-1)[torch.as_tensor(flat_rows(x, X) * Y + y)]


class DPO(Algorithm):
    name = "dpo"
    Config = DPOConfig
    summary = ("DPO / IPO (Rafailov et al. 2023; Azar et al. 2024): offline, online, or population; reward or "
               "preference problems")
    tracks = ("bandit", "lm", "diffusion")
    maturity = "verified against theory"
    tests = ("test_population_dpo_reaches_pi_star_beta", "test_dpo_with_deterministic_preferences_drives_the_loser_to_zero",
             "test_ipo_with_deterministic_preferences_stays_regularised", "test_dpo_on_a_symmetric_three_cycle_stays_at_pi_ref",
             "test_one_token_lm_update_equals_the_tabular_update[dpo]",
             "test_preference_labels_on_a_bradley_terry_problem_reach_pi_star_like_bt_labels_on_its_rewards")

    @classmethod
    def runs_on(cls, config) -> str:
        return "preference" if config.labels == "preference" else "reward"

    @staticmethod
    def pairing_hint(kind: str) -> str:
        return " (labels: preference runs DPO on a preference problem)" if kind == "preference" else ""

    @staticmethod
    def sequences_per_item(config) -> int:
        return 2

    @classmethod
    def generated_per_prompt(cls, config) -> int:
        return 2  # online: two samples of every prompt from pi_t in one generate call (lm_update)

    @staticmethod
    def needs_reward(config) -> bool:
        return config.mode == "online"

    @staticmethod
    def needs_prompts(config) -> bool:
        return config.mode == "online"

    @staticmethod
    def check_track(config, track: str) -> str | None:
        if config.loss == "diffusion" and track != "diffusion":
            return "loss: diffusion (Diffusion-DPO, on denoising errors) needs a diffusion policy"
        if track == "diffusion" and config.mode != "online":
            return "DPO on a diffusion policy is online (pairs of trajectories from pi_t ranked by the reward)"
        if track == "lm" and config.mode == "population":
            return "DPO on an LM is offline (a dataset) or online (pairs from pi_t); population is for bandits"
        if track == "lm" and config.mode == "offline" and not config.dataset:
            return "offline DPO needs a JSONL file with prompt, chosen, rejected (dataset)"
        return None

    @staticmethod
    def check_policy(config: DPOConfig, kind: str) -> str | None:
        return "labels: preference updates a tabular policy" if config.labels == "preference" and kind != "tabular" else None

    @staticmethod
    def check_problem(config: DPOConfig, problem: TabularBandit) -> None:
        X, Y = problem.num_contexts, problem.num_actions
        if config.dataset:
            PreferenceDataset.load(config.dataset, X, Y)
        if config.labels == "tensor":
            PreferenceOracle(problem, "tensor", preferences=load_preferences(config.preferences))

    @staticmethod
    def draws(config: DPOConfig) -> bool:  # population Adam shuffles its full batch (the order of the loss's sum)
        return config.mode != "population" or config.optimizer == "adam"

    @staticmethod
    def batchable(config: DPOConfig, kind: str) -> bool:
        return kind in ("tabular", "loglinear") and config.mode != "population"

    @staticmethod
    def kl_target(config: DPOConfig, problem) -> tuple[float, np.ndarray] | None:
        """DPO with Bradley–Terry labels of temperature s: (beta·s, ln pi*_{beta·s}), its minimiser with
        full coverage (beta·(h(y) - h(y')) = (r(y) - r(y'))/s). IPO: (tau, ln pi_IPO), pi_IPO the exact
        minimiser of its population loss under its pair law (:func:`ipo_target_log`). None for DPO with
        other labels or on a given data set (no closed-form target)."""
        members = getattr(problem, "members", None)
        if members is not None:
            parts = [DPO.kl_target(config, m) for m in members]
            return None if any(p is None for p in parts) else (parts[0][0], np.stack([p[1] for p in parts]))
        if config.dataset or config.labels == "preference":
            return None
        if config.loss == "dpo":
            if config.labels != "bt":
                return None
            c = config.beta * config.temperature
            return c, problem.regularised_optimum_log(c)
        P = load_preferences(config.preferences) if config.labels == "tensor" else None
        pref = PreferenceOracle(problem, config.labels, config.temperature, P).P
        X, Y = problem.num_contexts, problem.num_actions
        mu = None if config.mode == "online" else (problem.pi_ref if config.mu == "ref" else np.full((X, Y), 1.0 / Y))
        log_target = ipo_target_log(problem.log_pi_ref, pref, config.beta, mu, config.pair_law)
        return None if log_target is None else (config.beta, log_target)

    def __init__(self, config: DPOConfig, problem: TabularBandit, rng):
        super().__init__(config, problem, rng)
        if self.ctx is not None:  # LM: an offline dataset, tokenised, its reference log-probs precomputed
            if config.mode == "offline":
                self.data = self.ctx.load_pairs(config.dataset, config.logprob_temperature)
                self.cursor, self.order = 0, self.ctx.rng.permutation(len(self.data["query"]))
            return
        P = load_preferences(config.preferences) if config.labels == "tensor" else None
        members = getattr(problem, "members", [problem])  # a stack of problems: one oracle each
        self.oracles = [PreferenceOracle(m, config.labels, config.temperature, P) for m in members]
        self.oracle = self.oracles[0]
        X, Y = problem.num_contexts, problem.num_actions
        self._adam: dict | None = None if config.labels == "preference" else {}  # None: a fresh Adam each iteration
        self.data, self._pending = None, (0, 0)
        if config.mode == "offline":
            if config.dataset:
                data = PreferenceDataset.load(config.dataset, X, Y)
                if isinstance(rng, list):
                    data = PreferenceDataset(*(np.tile(a, (len(rng), 1)) for a in (data.prompt, data.chosen, data.rejected)))
            else:
                data = PreferenceDataset(*per_seed(self._generate, None, rng, problem))
            self.data = data
            n = data.prompt.shape[-1]
            if config.labels == "preference":  # counted at update 1
                self._pending = (2 * n, n)
            else:
                self.initial_samples, self.initial_queries = 2 * n, n
        self.mu = self._mu(problem) if config.mode == "population" else None
        if config.mode == "population" and config.dataset:  # the empirical distribution of a dataset
            self.data = PreferenceDataset.load(config.dataset, X, Y)
            self.weight = torch.ones(len(self.data), dtype=torch.float64)
        elif config.mode == "population":  # every ordered (chosen y, rejected y'), y != y', with its probability
            x, y, y2 = (a.ravel() for a in np.meshgrid(np.arange(X), np.arange(Y), np.arange(Y), indexing="ij"))
            keep = y != y2
            x, y, y2 = x[keep], y[keep], y2[keep]
            if config.pair_law == "independent":  # y, y' ~ mu independently, given y' != y
                w = problem.rho[x] * self.mu[x, y] * self.mu[x, y2] * self.oracle.prob(x, y, y2)
                w = w / w.sum()
            else:  # the offline sampler's pair law: y ~ mu, y' ~ mu(.|y' != y)
                pair = pair_probs(self.mu)
                w = problem.rho[x] * (pair[x, y, y2] + pair[x, y2, y]) * self.oracle.prob(x, y, y2)
            self.data = PreferenceDataset(x, y, y2)
            self.weight = torch.as_tensor(w)

    def _mu(self, problem: TabularBandit) -> np.ndarray:
        X, Y = problem.num_contexts, problem.num_actions
        return problem.pi_ref if self.config.mu == "ref" else np.full((X, Y), 1.0 / Y)

    def _member_oracle(self, problem: TabularBandit) -> PreferenceOracle:
        members = getattr(self.problem, "members", None)
        return self.oracle if members is None else self.oracles[members.index(problem)]

    def _generate(self, _policy, rng: np.random.Generator, problem: TabularBandit) -> tuple[np.ndarray, ...]:
        """The offline dataset of one seed: pairs from mu labelled by the oracle."""
        d = PreferenceDataset.generate(rng, problem, self._mu(problem), self.config.pairs, self._member_oracle(problem),
                                       self.config.pair_law)
        return d.prompt, d.chosen, d.rejected

    def _pairs(self, policy: Policy, rng: np.random.Generator, problem: TabularBandit) -> tuple[np.ndarray, ...]:
        """One online round of one seed: y, y' ~ pi_t (y' != y, or independent), labelled by the oracle."""
        x = problem.sample_contexts(rng, self.config.pairs)
        if self.config.pair_law == "independent":
            y, y2 = policy.sample(rng, x), policy.sample(rng, x)
        else:
            probs = np.exp(policy.log_probs_at(x))
            y = policy.sample(rng, x)
            y2 = sample_distinct(rng, probs, y)
        return (x, *self._member_oracle(problem).label(rng, x, y, y2))

    def _ref_log_probs(self, d: PreferenceDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """ln pi_ref of every chosen and rejected response of ``d`` (once per dataset, not per minibatch)."""
        if getattr(self, "_ref_of", (None,))[0] is not d:
            log_ref = torch.as_tensor(self.problem.log_pi_ref)
            self._ref_of = (d, ref_log_prob(log_ref, d.prompt, d.chosen), ref_log_prob(log_ref, d.prompt, d.rejected))
        return self._ref_of[1:]

    def _loss(self, policy: Policy, theta: torch.Tensor, d: PreferenceDataset, idx, weight=None):
        ref_w, ref_l = self._ref_log_probs(d)
        x, yw, yl = take(d.prompt, idx), take(d.chosen, idx), take(d.rejected, idx)
        lw, ll = policy.torch_log_prob_of(theta, x, yw, yl)
        hw, hl = lw - take(ref_w, idx), ll - take(ref_l, idx)
        fn = dpo_loss if self.config.loss == "dpo" else ipo_loss
        return fn(hw, hl, self.config.beta, weight)

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        cfg = self.config
        if cfg.mode == "population" and cfg.optimizer == "newton":
            return self._population(policy)
        if cfg.mode == "population" and cfg.optimizer == "gd":
            idx = np.arange(len(self.data))
            theta = torch.tensor(policy.params, dtype=torch.float64, requires_grad=True)
            self._loss(policy, theta, self.data, idx, self.weight).backward()
            with torch.no_grad():
                new = theta - cfg.lr * theta.grad
                loss = float(self._loss(policy, new, self.data, idx, self.weight))  # at the new policy, as every solver
            return Step(policy.with_params(new.numpy().copy()), loss, None, None)
        if cfg.mode == "population":
            n = len(self.data)
            new, loss = adam_fit(policy, lambda th, idx: self._loss(policy, th, self.data, idx, self.weight[idx]), n,
                                 cfg.epochs, n, cfg.lr, rng, self._adam)
            return Step(new, loss, None, None)
        if cfg.mode == "offline":
            d, (samples, queries), self._pending = self.data, self._pending, (0, 0)
        else:
            oracles = self.oracles if isinstance(rng, list) else [self.oracle]
            fast = online_pairs(policy, rng, self.problem, oracles, cfg.pairs, cfg.pair_law, sample_distinct)
            d = PreferenceDataset(*(fast if fast is not None else per_seed(self._pairs, policy, rng, self.problem)))
            samples, queries = 2 * cfg.pairs, cfg.pairs
        new, loss = adam_fit(policy, lambda th, idx: self._loss(policy, th, d, idx), d.prompt.shape[-1], cfg.epochs,
                             cfg.minibatch, cfg.lr, rng, self._adam)
        return Step(new, loss, samples, queries)

    def _population(self, policy: Policy) -> Step:
        """One damped Newton step: d = -|H|⁺g, then backtrack until Armijo's condition holds."""
        idx = np.arange(len(self.data))
        shape = policy.params.shape

        def f(flat: torch.Tensor) -> torch.Tensor:
            return self._loss(policy, flat.reshape(shape), self.data, idx, self.weight)

        theta = torch.tensor(policy.params, dtype=torch.float64).ravel()
        x = theta.clone().requires_grad_(True)
        f0 = f(x)
        (g,) = torch.autograd.grad(f0, x)
        H = torch.autograd.functional.hessian(f, theta)
        w, v = torch.linalg.eigh(H)
        w = w.abs()
        keep = w > 1e-12 * w.max()
        d = -(v[:, keep] @ ((v[:, keep].T @ g) / w[keep]))
        t, f0 = 1.0, float(f0.detach())
        slope = float(g @ d)
        with torch.no_grad():
            while t > 1e-12 and float(f(theta + t * d)) > f0 + 1e-4 * t * slope:
                t /= 2
            new = theta + t * d if t > 1e-12 else theta
            loss = float(f(new))
        return Step(policy.with_params(new.reshape(shape).numpy().copy()), loss, None, None)

    # ----- LM back-end ------------------------------------------------------------------------
    def lm_update(self, q, qm) -> Step:
        """Offline: the next rows of the dataset; online: two samples of every prompt from pi_t (one generate
        call) ranked by the reward (ties carry no preference). Then the DPO/IPO loss by AdamW."""
        cfg, ctx = self.config, self.ctx
        if cfg.mode == "offline":
            rows = ctx.next_rows(self, ctx.train.batch)
            d = self.data
            q, qm, yc, yr = d["query"][rows], d["query_mask"][rows], d["chosen"][rows], d["rejected"][rows]
            ref_c, ref_r = d["ref_chosen"][rows], d["ref_rejected"][rows]
            weight = torch.ones(len(rows))
            stats, samples, queries = {}, 0, 0
        else:
            B = len(q)
            q2, qm2 = torch.cat([q, q]), torch.cat([qm, qm])
            y = ctx.sample(q2, qm2)
            with ctx.logprob_temperature(cfg.logprob_temperature):
                ro = ctx.rollout_stats(q2, qm2, y)
            s1, s2 = ro["score"][:B], ro["score"][B:]
            first = (s1 >= s2)[:, None]
            yc, yr = torch.where(first, y[:B], y[B:]), torch.where(first, y[B:], y[:B])
            ref = ro["ref"].sum(1)
            ref_c, ref_r = torch.where(first[:, 0], ref[:B], ref[B:]), torch.where(first[:, 0], ref[B:], ref[:B])
            weight = (s1 != s2).float()
            stats, samples, queries = ctx.trl_stats(ro, 0.0), 2 * B, 2 * B
        margins = []

        def loss_fn(i):
            # sum(w·loss)/sum(w) over the whole minibatch (ties: weight 0); on every process and micro-batch
            # (its mean is a collective with several processes)
            share = ctx.minibatch_share(weight, i)
            loss, hw, hl = self._lm_loss(q[i], qm[i], yc[i], yr[i], ref_c[i], ref_r[i], weight[i], share)
            margins.append((hw.detach(), hl.detach()))
            return loss

        loss = ctx.optimise(cfg, len(q), cfg.epochs, loss_fn)
        hw, hl = (torch.cat(a) for a in zip(*margins))  # TRL's rewards/*: beta·log-ratios over the epoch's minibatches
        stats |= {"rewards/chosen": cfg.beta * hw, "rewards/rejected": cfg.beta * hl,
                  "rewards/margins": cfg.beta * (hw - hl), "rewards/accuracies": (hw > hl).float()}
        return Step(None, loss, samples, queries, stats)

    def diffusion_update(self, q, qm) -> Step:
        """loss: diffusion — Diffusion-DPO (:func:`diffusion_dpo_update`); dpo — online DPO on trajectory log-ratios."""
        return diffusion_dpo_update(self, q, qm) if self.config.loss == "diffusion" else self.lm_update(q, qm)

    def _lm_loss(self, q, qm, yc, yr, ref_c, ref_r, weight=None, share=None):
        """The loss of one LM minibatch and the (summed) log-ratios h(y_w), h(y_l) (pairs of weight 0, ties, carry no
        preference; IPO with ``ipo_length_normalize`` takes h/length, TRL's); ``share``: the factor that makes this
        part's weighted mean its share of the whole minibatch's (:meth:`~testbed.llm.backend.LMBackend.minibatch_share`)."""
        pol, n = self.ctx.policy, len(q)
        with self.ctx.logprob_temperature(self.config.logprob_temperature):
            new = pol.seq_logprob(torch.cat([q, q]), torch.cat([qm, qm]), torch.cat([yc, yr]))
        hw, hl = new[:n] - ref_c, new[n:] - ref_r
        if weight is not None and float(weight.sum()) == 0:
            return new.sum() * 0.0, hw, hl
        fn = dpo_loss if self.config.loss == "dpo" else ipo_loss
        hc, hr = hw, hl
        if self.config.loss == "ipo" and self.config.ipo_length_normalize:  # TRL: over the completion length (>= 1)
            hc, hr = (h / self.ctx.response_mask(y).sum(1).clamp(min=1) for h, y in ((hw, yc), (hl, yr)))
        loss = fn(hc, hr, self.config.beta, weight)
        if share is not None:
            loss = loss * share
        return loss, hw, hl

    def batch_loss(self, q, qm, yc, yr, ref_c, ref_r, weight=None):
        """The LM DPO loss of one minibatch (for tests)."""
        return self._lm_loss(q, qm, yc, yr, ref_c, ref_r, weight)[0]
