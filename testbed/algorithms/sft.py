"""Supervised fine-tuning: maximise the log-likelihood of demonstrations, -mean ln pi_theta(y|x)
(:func:`testbed.losses.sft_loss`, the token-mean negative log-likelihood). The paper's SFT baseline and the first
stage of its TL;DR pipeline.

- LM: prompt/completion rows of a JSONL ``dataset``, the token-mean NLL at temperature 1, the LM back-end's AdamW
  solver.
- Bandit: demonstrations y ~ d(.|x) of a ``demonstrator`` — ``optimal``: the argmax of the true reward (ties share
  the mass; an expert, no reward queries), or ``best_of_n``: the best by reward of n samples of pi_ref (the first
  of equally good ones; n reward queries each), whose law is

      d(y|x) = (G(y)^n - F(y)^n)·pi_ref(y|x)/T(y),

  F(y), G(y) the pi_ref-mass of responses worse than y, and no better than y, T(y) = G(y) - F(y) the mass of
  y's ties (:func:`demonstration_probs`; noise-free rewards). ``sampled``: each iteration draws ``demonstrations``
  contexts x ~ rho and one demonstration each, then ``epochs`` passes of minibatch Adam on their NLL (Adam's
  moments persist). ``population``: the expected loss, the cross-entropy E_x sum_y d(y|x)·(-ln pi_theta(y|x)),
  minimised by ``epochs`` full-batch Adam steps per iteration or, for a tabular policy, exactly: pi = d (its
  unique minimiser, finite for ``best_of_n`` since pi_ref > 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from testbed.algorithms.base import (
    BANDIT,
    LM,
    Algorithm,
    Step,
    adam_fit,
    count,
    grad_accum_field,
    items,
    minibatch_field,
    one_of,
    path,
    positive,
    take,
)
from testbed.errors import InputError
from testbed.losses import sft_loss
from testbed.policies import Policy, sample_rows


@dataclass
class SFTConfig:
    dataset: str = path("LM: JSONL with prompt, completion (text)", tracks=LM)
    mode: str = one_of("sampled", ("sampled", "population"), "fresh demonstrations each iteration, or the expected "
                       "cross-entropy to the demonstrator", tracks=BANDIT)
    demonstrator: str = one_of("optimal", ("optimal", "best_of_n"), "argmax_y r(x, y), or the best of n samples of "
                               "pi_ref by reward", tracks=BANDIT)
    n: int = items(4, per_item=True, doc="best_of_n: samples of pi_ref per demonstration", tracks=BANDIT,
                   unread_when={"demonstrator": ("optimal",)})
    demonstrations: int = items(250, "sampled: contexts x ~ rho per iteration, one demonstration each", tracks=BANDIT,
                                unread_when={"mode": ("population",)})
    solver: str = one_of("adam", ("adam", "exact"), "Adam on the NLL, or (population, tabular) its minimiser pi = d",
                         tracks=BANDIT)  # solver: exact with mode: sampled is validate's one line (what exact needs)
    lr: float = positive(0.05, "Adam learning rate (LM: train.lr)", tracks=BANDIT, unread_when={"solver": ("exact",)})
    epochs: int = count(1, "passes over each batch (population: full-batch Adam steps per iteration)",
                        unread_when={"solver": ("exact",)})
    minibatch: int = minibatch_field(64, "rows per optimiser step (population: the full batch)",
                                     unread_when={"mode": ("population",)})
    grad_accum: int = grad_accum_field()

    def validate(self, where: str) -> None:
        if self.solver == "exact" and self.mode != "population":
            raise InputError(f"{where}.solver: exact minimises the population cross-entropy (mode: population)")
        if self.solver == "exact" and self.demonstrator == "optimal":
            raise InputError(f"{where}.solver: exact with demonstrator: optimal has no finite minimiser (a point mass on "
                             "argmax r); use demonstrator: best_of_n or solver: adam")


def demonstration_probs(problem, demonstrator: str, n: int) -> np.ndarray:
    """d(y|x) [X, Y], the law of one demonstration (module docstring; ``best_of_n`` with the noise-free rewards)."""
    if demonstrator == "optimal":
        return problem.optimal_policy()
    r, pi = problem.rewards, problem.pi_ref
    worse = (r[:, None, :] < r[:, :, None]).astype(np.float64)  # [x, y, y']: r(y') < r(y)
    ties = (r[:, None, :] == r[:, :, None]).astype(np.float64)
    F, T = np.einsum("xab,xb->xa", worse, pi), np.einsum("xab,xb->xa", ties, pi)
    return ((F + T) ** n - F**n) * pi / T


class SFT(Algorithm):
    name = "sft"
    Config = SFTConfig
    summary = "supervised fine-tuning: the NLL of demonstrations (LM: dataset completions; bandit: a demonstrator's)"
    tracks = ("bandit", "lm")
    tests = ("test_sft_fits_demonstrations", "test_population_sft_exact_solver_is_the_best_of_n_law",
             "test_population_sft_with_adam_converges_to_the_demonstrations",
             "test_a_sampled_sft_step_is_the_cross_entropy_gradient_of_its_batch")

    @staticmethod
    def needs_reward(config) -> bool:
        return config.demonstrator == "best_of_n"

    @staticmethod
    def uses_reference(config) -> bool:
        return config.demonstrator == "best_of_n"

    @staticmethod
    def needs_prompts(config) -> bool:
        return False

    @staticmethod
    def check_track(config, track: str) -> str | None:
        return "SFT on an LM needs a JSONL file with prompt, completion (dataset)" if track == "lm" and not config.dataset \
            else None

    @staticmethod
    def check_policy(config, kind: str) -> str | None:
        return "solver: exact sets a tabular policy to d; use solver: adam" if config.solver == "exact" and \
            kind != "tabular" else None

    def __init__(self, config, problem, rng):
        super().__init__(config, problem, rng)
        if self.ctx is not None:
            self.data = self.ctx.load_completions(config.dataset)
            self.cursor, self.order = 0, self.ctx.rng.permutation(len(self.data["query"]))
            return
        self.d = demonstration_probs(problem, config.demonstrator, config.n)
        self._adam: dict = {}

    # ----- bandit back-end --------------------------------------------------------------------
    def demonstrations(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, int]:
        """(x, y, responses drawn, reward queries) of one sampled batch: x ~ rho, y ~ the demonstrator."""
        cfg, p = self.config, self.problem
        x = p.sample_contexts(rng, cfg.demonstrations)
        if cfg.demonstrator == "optimal":
            return x, sample_rows(rng, self.d[x]), len(x), 0
        xs = np.repeat(x, cfg.n)
        ys = sample_rows(rng, p.pi_ref[xs])
        r = p.sample_rewards(rng, xs, ys).reshape(len(x), cfg.n)
        return x, ys.reshape(len(x), cfg.n)[np.arange(len(x)), r.argmax(axis=1)], len(xs), len(xs)

    def population_loss(self, policy: Policy, theta: torch.Tensor) -> torch.Tensor:
        """E_x sum_y d(y|x)·(-ln pi_theta(y|x)): sft_loss with the weights rho(x)·d(y|x) (summing to 1)."""
        lp = policy.torch_log_probs(theta, np.arange(self.problem.num_contexts))
        return sft_loss(lp, torch.as_tensor(self.problem.rho[:, None] * self.d))

    def update(self, policy: Policy, rng: np.random.Generator) -> Step:
        cfg = self.config
        if cfg.mode == "population" and cfg.solver == "exact":
            new = policy.with_params(np.log(self.d))
            return Step(new, float(self.population_loss(new, torch.as_tensor(new.params))), None, None)
        if cfg.mode == "population":
            new, loss = adam_fit(policy, lambda th, idx: self.population_loss(policy, th), 1, cfg.epochs, 1, cfg.lr, rng,
                                 self._adam)
            return Step(new, loss, None, None)
        x, y, samples, queries = self.demonstrations(rng)

        def loss_fn(theta: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
            lp = policy.torch_log_prob(theta, take(x, idx), take(y, idx))[:, None]
            return sft_loss(lp, torch.ones_like(lp))

        new, loss = adam_fit(policy, loss_fn, len(x), cfg.epochs, cfg.minibatch, cfg.lr, rng, self._adam)
        return Step(new, loss, samples, queries)

    # ----- LM back-end ------------------------------------------------------------------------
    def lm_update(self, q, qm) -> Step:
        ctx = self.ctx
        rows = ctx.next_rows(self, ctx.train.batch)
        d = self.data
        q, qm, y = d["query"][rows], d["query_mask"][rows], d["completion"][rows]

        def loss_fn(i):
            mask = ctx.response_mask(y[i])
            logits = ctx.forward_logits(q[i], qm[i], y[i], mask)
            return sft_loss(ctx.token_logprobs(logits, y[i], mask, temperature=1.0), mask)

        loss = ctx.optimise(self.config, len(rows), self.config.epochs, loss_fn)
        return Step(None, loss, 0, 0, {})
