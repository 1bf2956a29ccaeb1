"""The LM policy back-end: what the one implementation of each method (``testbed/algorithms``) calls
when its policy is a causal LM.

:class:`LMBackend` holds the policy (:class:`~testbed.llm.policy.LMPolicy`), the reward, the critic
(PPO), the accelerator, optimiser, LR schedule, the numpy RNG (the same on every process) and the
``train`` settings. It offers the algorithms

- the **solver**: epochs × minibatches × micro-batches of AdamW through ``accelerate``
  (:meth:`optimise`), with the single-step forward saving (:meth:`single_step`);
- **collection**: sampling from pi_t or pi_ref (:meth:`sample`), log-probabilities under pi_t and
  pi_ref and the (missing-EOS-penalised) scores (:meth:`rollout_stats`), offline rows (:meth:`next_rows`);
- TRL-style statistics of a rollout (:meth:`trl_stats`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from testbed.llm.policy import LMPolicy, forward_logits, left_pad, logprob_temperature, response_mask, token_logprobs, unwrap
from testbed.llm.rewards import last_token_index, score_responses


@dataclass
class LMBackend:
    policy: LMPolicy
    reward: object
    critic: object
    accelerator: object
    train: object
    rng: np.random.Generator
    world: int
    rank: int
    prepared: object = None
    optimizer: object = None
    scheduler: object = None
    params: list | None = None

    track = "lm"

    def minibatch(self, config) -> int:
        """Items per optimiser step: the algorithm's own ``minibatch`` (when set), else ``train.minibatch``."""
        return getattr(config, "minibatch", 0) or self.train.minibatch

    def grad_accum(self, config) -> int:
        """Micro-batches per minibatch: the algorithm's own ``grad_accum`` (when set), else ``train.grad_accum``."""
        return getattr(config, "grad_accum", 0) or self.train.grad_accum

    # -- the solver: epochs x minibatches x micro-batches (gradient accumulation) --
    def minibatches(self, n: int, M: int):
        """Index arrays of this process's part of each minibatch, reshuffled per epoch (numpy RNG shared
        by all processes). ``replicated`` rollouts: every process holds the whole batch and takes its
        slice of each global minibatch; ``sharded``: each process permutes its own shard."""
        W, r = self.world, self.rank
        perm = self.rng.permutation(n)
        if self.train.rollouts == "replicated":
            for s in range(0, n, M):
                yield np.array_split(perm[s:s + M], W)[r]
        else:
            m = M // W
            for s in range(0, n, m):
                yield perm[s:s + m]

    def mean_over_minibatch(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of per-item ``x`` over the whole (global) minibatch being optimised: every process's part."""
        m = x[torch.as_tensor(self.minibatch_index, dtype=torch.long, device=x.device)].mean()
        return self.accelerator.reduce(m, "mean") if self.world > 1 else m

    def minibatch_share(self, weight: torch.Tensor, idx) -> torch.Tensor:
        """sum(weight[idx]) / (mean_over_minibatch(weight)·len(idx)): the factor that turns the weighted mean over
        micro-batch ``idx`` (weights ``weight[idx]``) into its share of the whole minibatch's weighted mean
        sum(w·loss)/sum(w), since the solver averages the micro-batches' (equal-sized) losses. A micro-batch of
        weight 0 (ties only) then adds nothing instead of counting as a zero loss in that average."""
        w = weight[idx]
        return w.sum() / (self.mean_over_minibatch(weight) * len(w))

    def optimise(self, config, n: int, epochs: int, loss_fn) -> float:
        """``epochs`` passes of minibatch AdamW on ``loss_fn(idx) -> scalar`` (mean over idx)."""
        return self.optimise_shards(config, n, epochs, [loss_fn])[0]

    def optimise_shards(self, config, n: int, epochs: int, loss_fns: list, enter=None) -> list[float]:
        """:meth:`optimise` on K shards of ``n`` items each (``train.shards``, :mod:`testbed.llm.shards`): each
        minibatch is every shard's part of it in turn, K × G micro-batches accumulated into one step, as DDP
        averages K processes' gradients; ``enter(k)``: the context shard k's micro-batches run in (its RNG stream).
        Each shard's mean loss."""
        acc, opt, K = self.accelerator, self.optimizer, len(loss_fns)
        G = self.grad_accum(config)
        # every minibatch is K x G whole micro-batches: count them from 0 (another run may have used another G)
        acc.gradient_accumulation_steps, acc.step = G * K, 0
        losses = [[] for _ in loss_fns]
        for _ in range(epochs):
            for mb in self.minibatches(n, self.minibatch(config) // K):
                self.minibatch_index = mb  # this process's part of the minibatch (a weighted loss's normaliser)
                aside = None
                for k, loss_fn in enumerate(loss_fns):
                    aside = self._set_aside(aside) if k else None
                    with enter(k) if enter is not None else contextlib.nullcontext():
                        for micro in np.array_split(mb, G):
                            with acc.accumulate(self.prepared):
                                loss = loss_fn(torch.as_tensor(micro, dtype=torch.long))
                                acc.backward(loss)
                                if acc.sync_gradients and aside is not None:
                                    self._set_aside(aside, back=True)
                                if acc.sync_gradients and self.train.max_grad_norm > 0:
                                    acc.clip_grad_norm_(self.params, self.train.max_grad_norm)
                                opt.step()
                                opt.zero_grad()
                            losses[k].append(float(loss.detach()))
        return [float(np.mean(x)) if x else float("nan") for x in losses]

    def _set_aside(self, aside: list | None, back: bool = False) -> list:
        """The shards' gradients summed as DDP sums the processes': each shard's own sum first (its G micro-batches),
        then the shards' sums added. Moves the gradients into ``aside`` (added), or (``back``) adds ``aside`` to them.
        A parameter no shard gave a gradient keeps ``grad`` None, so AdamW skips it as it does in one process."""
        aside = aside if aside is not None else [None] * len(self.params)
        for i, p in enumerate(self.params):
            a = aside[i]
            if back:
                if a is not None:
                    p.grad = a if p.grad is None else p.grad.add_(a)
            elif p.grad is not None:
                aside[i] = p.grad if a is None else a.add_(p.grad)
                p.grad = None
        return aside

    def single_step(self, config, n: int, epochs: int) -> bool:
        """True when the batch of ``n`` items makes exactly one optimiser step (one epoch, one minibatch, one
        process): every forward pass of it, micro-batches included, runs at theta_t, so it gives ln pi_t itself."""
        return epochs == 1 and n <= self.minibatch(config) and self.world == 1

    # -- token-level helpers (the algorithms never import the LM back-end) --
    def left_pad(self, q, qm):
        return left_pad(q, qm, self.policy.pad_id)

    @staticmethod
    def last_token_index(mask):
        return last_token_index(mask)

    def token_logprobs(self, logits, y, mask, temperature: float | None = None):
        """ln pi(y_t | ...) per token at the sampling temperature (or ``temperature``), 0 after the first EOS."""
        pol = self.policy
        return token_logprobs(logits, y, pol.temperature if temperature is None else temperature, pol.suppress, mask)

    def logprob_temperature(self, temperature: float):
        """A context in which the policy's log-probs use ``temperature`` (0: the sampling temperature)."""
        return logprob_temperature(self.policy, temperature)

    def response_mask(self, y):
        return response_mask(y, self.policy.eos_id)

    def forward_logits(self, q, qm, y, mask):
        return forward_logits(self.prepared, q, qm, y, mask)

    # -- collection --
    @torch.no_grad()
    def sample(self, q, qm, ref: bool = False):
        pol = self.policy
        if ref and pol.ref_kind == "adapter":
            with unwrap(pol.model).disable_adapter():
                return pol.generate(q, qm)
        if ref:
            m, pol.model = pol.model, pol.ref_model
            try:
                return pol.generate(q, qm)
            finally:
                pol.model = m
        return pol.generate(q, qm)

    @torch.no_grad()
    def rollout_stats(self, q, qm, resp, policy_logprobs: bool = True) -> dict:
        """Per-response: penalised score, raw score, ln pi_t and ln pi_ref (token-level, [B, L]), mask, the
        responses. ``policy_logprobs`` False: no ln pi_t (the caller takes it from its only optimiser step)."""
        pol = self.policy
        if policy_logprobs:
            lp, mask = pol.logprobs(q, qm, resp)
        else:
            lp, mask = None, response_mask(resp, pol.eos_id)
        ref = pol.ref_logprobs(q, qm, resp)
        raw, score = score_responses(self.reward, q, qm, resp, pol.eos_id, self.train.missing_eos_penalty,
                                     self.train.missing_eos_mode, self.train.missing_eos_test, pol.pad_id)
        return {"score": score, "raw": raw, "lp": lp, "ref": ref, "mask": mask, "resp": resp}

    def load_pairs(self, path: str, temperature: float = 0.0) -> dict:
        """An offline DPO dataset (prompt/chosen/rejected JSONL) tokenised, with the reference log-probs of
        every chosen and rejected response precomputed once (``ref_chosen``, ``ref_rejected``)."""
        from testbed.llm.data import load_pairs
        d = load_pairs(path, self.policy, self.train.max_prompt_length)
        with torch.no_grad(), self.logprob_temperature(temperature):
            d["ref_chosen"] = self._ref_seq(d["query"], d["query_mask"], d["chosen"])
            d["ref_rejected"] = self._ref_seq(d["query"], d["query_mask"], d["rejected"])
        return d

    def load_completions(self, path: str) -> dict:
        """An SFT dataset (prompt/completion JSONL) tokenised."""
        from testbed.llm.data import load_completions
        return load_completions(path, self.policy, self.train.max_prompt_length)

    def _ref_seq(self, q, qm, y):
        pol, out = self.policy, []
        for s in range(0, len(q), 64):
            if pol.ref_kind in ("adapter", "copy"):
                out.append(pol.ref_logprobs(q[s:s + 64], qm[s:s + 64], y[s:s + 64]).sum(1))
            else:
                out.append(pol.seq_logprob(q[s:s + 64], qm[s:s + 64], y[s:s + 64]))
        return torch.cat(out)

    def next_rows(self, state, n: int) -> np.ndarray:
        """The next ``n`` rows of an offline dataset (``state``: an object with ``order`` and ``cursor``),
        reshuffled when exhausted, then this process's share (sharded rollouts)."""
        idx = []
        while len(idx) < n:
            if state.cursor >= len(state.order):
                state.order, state.cursor = self.rng.permutation(len(state.order)), 0
            take = state.order[state.cursor:state.cursor + n - len(idx)]
            idx.extend(take.tolist())
            state.cursor += len(take)
        rows = np.asarray(idx)
        return rows if self.train.rollouts == "replicated" else np.array_split(rows, self.world)[self.rank]

    def trl_stats(self, ro: dict, beta: float) -> dict:
        """TRL-style objective/* statistics of a rollout (means over this process's responses)."""
        kl = (ro["lp"] - ro["ref"]).sum(1)
        eos = (ro["mask"].sum(1) > 0) & ((ro["resp"] == self.policy.eos_id).any(1))
        return {"objective/scores": ro["score"], "objective/kl": kl, "objective/entropy": -ro["lp"].sum(1),
                "objective/non_score_reward": -beta * kl, "objective/rlhf_reward": ro["score"] - beta * kl,
                "val/num_eos_tokens": eos.float(), "tokens": ro["mask"].sum(1).float()}


def backend_state(ctx) -> dict:
    """The back-end's part of a checkpoint: trainable weights (policy, critic), optimiser and scheduler state,
    numpy and torch RNG states (the LM and diffusion runs add their loop's own fields)."""
    return {"model": ctx.accelerator.unwrap_model(ctx.prepared).state_dict(),
            "optimizer": ctx.optimizer.state_dict(), "scheduler": ctx.scheduler.state_dict(),
            "np_rng": ctx.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}


def restore_backend(ctx, state: dict) -> None:
    """Put back what :func:`backend_state` saved."""
    ctx.accelerator.unwrap_model(ctx.prepared).load_state_dict(state["model"])
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.scheduler.load_state_dict(state["scheduler"])
    ctx.rng.bit_generator.state = state["np_rng"]
    torch.set_rng_state(state["torch_rng"])
