"""REBEL, PPO, RLOO, DPO (offline and online) and SFT on causal LMs, with the shared losses.

An LM is a contextual bandit whose responses are token sequences (DESIGN.md §1): each algorithm
here collects a batch with :class:`~testbed.llm.policy.LMPolicy` and regresses / clips / ranks with
the same pure functions of :mod:`testbed.losses` that the bandit algorithms call. Units of the
``minibatch`` setting: a pair (REBEL, online DPO), a response (PPO, RLOO) or a dataset row
(offline DPO, SFT).

Defaults follow the official REBEL TL;DR code (DESIGN.md §3): two samples per prompt from pi_t,
pi_t log-probs computed once per batch, eta = 1, beta = 0.05, 4 epochs reshuffled per batch,
AdamW with linear LR decay (in :mod:`testbed.llm.train`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from testbed.algorithms.base import count, flag, nonneg, nonneg_count, one_of, path, positive, unit_open
from testbed.errors import InputError
from testbed.llm.policy import forward_logits, left_pad, logprob_temperature, response_mask, token_logprobs, unwrap
from testbed.llm.rewards import last_token_index, score_responses
from testbed.losses import (
    dpo_loss,
    gae,
    kl_shaped_reward,
    leave_one_out_advantage,
    ppo_clip_loss,
    rebel_loss,
    rebel_loss_official,
    sft_loss,
    value_loss,
    whiten,
)


@dataclass
class LMStep:
    """One iteration's report: mean loss, responses drawn, reward queries, and logged statistics."""

    loss: float | None
    samples: int
    queries: int
    stats: dict


# ----- configs ---------------------------------------------------------------------------------
@dataclass
class Microbatched:
    """Per algorithm: its minibatch (items per optimiser step) and micro-batches (gradient accumulation),
    overriding the ``train`` block's, e.g. so that every algorithm of a study steps on as many sequences."""

    minibatch: int = nonneg_count(0, "items per optimiser step for this algorithm (0: train.minibatch); items as in "
                                     "train.minibatch")
    grad_accum: int = nonneg_count(0, "micro-batches per minibatch for this algorithm (0: train.grad_accum): the same "
                                      "optimiser steps on fewer sequences per backward pass")


@dataclass
class REBELConfig(Microbatched):
    eta: float = positive(1.0, "step size eta > 0 (official: 1)")
    beta: float = nonneg(0.05, "KL coefficient in the reward r - beta·(ln pi_t - ln pi_ref) (official: 0.05)")
    epochs: int = count(4, "passes over each batch, reshuffled (official: 4)")
    form: str = one_of("official", ("official", "paper"), "loss form: mean((Δlogratio - eta·Δr)²) or the paper's (1/eta)")
    y_prime: str = one_of("policy", ("policy", "ref"), "where y' comes from: pi_t (official) or pi_ref")


@dataclass
class PPOConfig(Microbatched):
    beta: float = nonneg(0.05, "per-token KL penalty coefficient in the reward")
    epochs: int = count(4, "passes over each batch, reshuffled")
    clip_eps: float = unit_open(0.2, "policy clip range")
    value_clip: float = nonneg(0.2, "value clipping range (0: off)")
    vf_coef: float = positive(0.1, "value-loss coefficient")
    gamma: float = positive(1.0, "GAE discount")
    lam: float = positive(0.95, "GAE lambda")
    whiten_rewards: bool = flag(False, "whiten the per-token rewards before GAE")
    critic: str = one_of("backbone", ("backbone",), "critic: a value head on its own copy of the policy backbone "
                         "(LoRA-adapted when the policy is)")


@dataclass
class RLOOConfig(Microbatched):
    k: int = count(2, "samples per prompt (>= 2)")
    beta: float = nonneg(0.05, "KL coefficient in the sequence reward")
    epochs: int = count(1, "passes over each batch (1: plain REINFORCE with the leave-one-out baseline)")
    clip_eps: float = unit_open(0.2, "clip range when epochs > 1")
    normalize_advantage: bool = flag(False, "standardise advantages within each batch")

    def validate(self, where: str) -> None:
        if self.k < 2:
            raise InputError(f"{where}.k must be >= 2 for a leave-one-out baseline (got {self.k})")


@dataclass
class DPOConfig(Microbatched):
    beta: float = positive(0.1, "KL strength beta > 0")
    mode: str = one_of("offline", ("offline", "online"), "a prompt/chosen/rejected dataset, or pairs from pi_t")
    dataset: str = path("offline: JSONL with prompt, chosen, rejected (text)")
    epochs: int = count(1, "passes over each batch")
    logprob_temperature: float = nonneg(0.0, "temperature of DPO's log-probs (0: the sampling temperature; TRL: 1)")

    def validate(self, where: str) -> None:
        if self.mode == "offline" and not self.dataset:
            raise InputError(f"{where}.dataset: offline DPO needs a JSONL file with prompt, chosen, rejected")


@dataclass
class SFTConfig(Microbatched):
    dataset: str = path("JSONL with prompt, completion (text)")
    epochs: int = count(1, "passes over each batch")

    def validate(self, where: str) -> None:
        if not self.dataset:
            raise InputError(f"{where}.dataset: SFT needs a JSONL file with prompt, completion")


# ----- the shared machinery ----------------------------------------------------------------------
class LMAlgorithm:
    """An update rule on an LM. ``update(query, query_mask)`` returns an :class:`LMStep`.

    ``ctx`` (a :class:`testbed.llm.train.Context`) holds the policy, reward, accelerator, optimiser,
    LR schedule, numpy RNG (the same on every process) and the training settings.
    """

    name = ""
    Config: type = object
    models_held: tuple[str, ...] = ("policy", "reward model")
    needs_reward = True
    needs_prompts = True

    def __init__(self, config, ctx):
        self.config, self.ctx = config, ctx

    def trainable(self) -> nn.Module:
        """The module whose parameters the optimiser updates (what accelerate prepares)."""
        return self.ctx.policy.model

    @property
    def minibatch(self) -> int:
        """Items per optimiser step: the algorithm's own ``minibatch``, else ``train.minibatch``."""
        return self.config.minibatch or self.ctx.train.minibatch

    @property
    def grad_accum(self) -> int:
        """Micro-batches per minibatch: the algorithm's own ``grad_accum``, else ``train.grad_accum``."""
        return self.config.grad_accum or self.ctx.train.grad_accum

    # -- optimisation loop: epochs x minibatches x micro-batches (gradient accumulation) --
    def minibatches(self, n: int):
        """Index arrays of this process's part of each minibatch, reshuffled per epoch (numpy RNG shared
        by all processes). ``replicated`` rollouts: every process holds the whole batch and takes its
        slice of each global minibatch; ``sharded``: each process permutes its own shard."""
        ctx = self.ctx
        W, r = ctx.world, ctx.rank
        M = self.minibatch
        perm = ctx.rng.permutation(n)
        if ctx.train.rollouts == "replicated":
            for s in range(0, n, M):
                yield np.array_split(perm[s:s + M], W)[r]
        else:
            m = M // W
            for s in range(0, n, m):
                yield perm[s:s + m]

    def optimise(self, n: int, epochs: int, loss_fn) -> float:
        """``epochs`` passes of minibatch AdamW on ``loss_fn(idx) -> scalar`` (mean over idx)."""
        ctx = self.ctx
        acc, opt = ctx.accelerator, ctx.optimizer
        G = self.grad_accum
        # every minibatch is G whole micro-batches: count them from 0 (another run may have used another G)
        acc.gradient_accumulation_steps, acc.step = G, 0
        losses = []
        for _ in range(epochs):
            for mb in self.minibatches(n):
                for micro in np.array_split(mb, G):
                    with acc.accumulate(ctx.prepared):
                        loss = loss_fn(torch.as_tensor(micro, dtype=torch.long))
                        acc.backward(loss)
                        if acc.sync_gradients and ctx.train.max_grad_norm > 0:
                            acc.clip_grad_norm_(ctx.params, ctx.train.max_grad_norm)
                        opt.step()
                        opt.zero_grad()
                    losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    # -- rollout helpers --
    @torch.no_grad()
    def sample(self, q, qm, ref: bool = False):
        pol = self.ctx.policy
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
    def rollout_stats(self, q, qm, resp, policy_logprobs: bool = True):
        """Per-response: penalised score, raw score, ln pi_t and ln pi_ref (token-level, [B, L]), mask.
        ``policy_logprobs`` False: no ln pi_t (the caller takes it from its only optimiser step)."""
        ctx, pol = self.ctx, self.ctx.policy
        if policy_logprobs:
            lp, mask = pol.logprobs(q, qm, resp)
        else:
            lp, mask = None, response_mask(resp, pol.eos_id)
        ref = pol.ref_logprobs(q, qm, resp)
        raw, score = score_responses(ctx.reward, q, qm, resp, pol.eos_id, ctx.train.missing_eos_penalty,
                                     ctx.train.missing_eos_mode, ctx.train.missing_eos_test, pol.pad_id)
        return {"score": score, "raw": raw, "lp": lp, "ref": ref, "mask": mask}

    def single_step(self, n: int, epochs: int) -> bool:
        """True when the batch of ``n`` items makes exactly one optimiser step (one epoch, one minibatch, one
        process): every forward pass of it, micro-batches included, runs at theta_t, so it gives ln pi_t itself."""
        return epochs == 1 and n <= self.minibatch and self.ctx.world == 1

    def trl_stats(self, ro: dict, beta: float) -> dict:
        """TRL-style objective/* statistics of a rollout (means over this process's responses)."""
        kl = (ro["lp"] - ro["ref"]).sum(1)
        eos = (ro["mask"].sum(1) > 0) & ((ro["resp"] == self.ctx.policy.eos_id).any(1))
        return {"objective/scores": ro["score"], "objective/kl": kl, "objective/entropy": -ro["lp"].sum(1),
                "objective/non_score_reward": -beta * kl, "objective/rlhf_reward": ro["score"] - beta * kl,
                "val/num_eos_tokens": eos.float(), "tokens": ro["mask"].sum(1).float()}


def _cat(*ts):
    return torch.cat(ts, 0)


# ----- REBEL -------------------------------------------------------------------------------------
class LMREBEL(LMAlgorithm):
    """REBEL on an LM: regress Δ ln(pi_theta/pi_t) of two responses onto eta·Δr (Gao et al. 2024)."""

    name = "rebel"
    Config = REBELConfig

    def update(self, q, qm) -> LMStep:
        cfg, pol = self.config, self.ctx.policy
        B = len(q)
        q2, qm2 = _cat(q, q), _cat(qm, qm)
        if cfg.y_prime == "policy":  # both samples of every prompt in one generate call
            y = self.sample(q2, qm2)
        else:
            y = _cat(self.sample(q, qm), self.sample(q, qm, ref=True))
        y1, y2 = y[:B], y[B:]
        single = self.single_step(B, cfg.epochs)
        ro = self.rollout_stats(q2, qm2, y, policy_logprobs=not single)
        ro["resp"] = y
        ref = ro["ref"].sum(1)
        loss_f = rebel_loss_official if cfg.form == "official" else rebel_loss
        if single:
            # one optimiser step: ln pi_t = the detached log-probs of its own forward (saves a forward pass)
            ro["lp"] = torch.zeros_like(ro["ref"])

            def loss_fn(i):
                j = _cat(i, i + B)
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
                new = pol.seq_logprob(_cat(q[i], q[i]), _cat(qm[i], qm[i]), _cat(y1[i], y2[i]))
                return loss_f(new[:len(i)] - lp1[i], new[len(i):] - lp2[i], r1[i], r2[i], cfg.eta)

        loss = self.optimise(B, cfg.epochs, loss_fn)
        return LMStep(loss, 2 * B, 2 * B, self.trl_stats(ro, cfg.beta))

    def batch_loss(self, q, qm, y1, y2, lp1, lp2, r1, r2) -> torch.Tensor:
        """The loss of one minibatch at the current parameters (for tests)."""
        cfg, pol = self.config, self.ctx.policy
        loss_f = rebel_loss_official if cfg.form == "official" else rebel_loss
        return loss_f(pol.seq_logprob(q, qm, y1) - lp1, pol.seq_logprob(q, qm, y2) - lp2, r1, r2, cfg.eta)


# ----- PPO ---------------------------------------------------------------------------------------
class ValueModel(nn.Module):
    """A critic: a transformer backbone and a linear value head, V at every position."""

    def __init__(self, backbone: nn.Module, hidden: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1 / np.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return self.head(h)[..., 0].float()


def make_critic(base_causal_lm, lora: dict | None) -> ValueModel:
    """A value model on a copy of ``base_causal_lm``'s backbone (before any LoRA), LoRA-adapted if asked."""
    backbone = copy.deepcopy(getattr(base_causal_lm, base_causal_lm.base_model_prefix))
    if lora:
        from peft import LoraConfig, get_peft_model
        backbone = get_peft_model(backbone, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                                                       target_modules=lora.get("target_modules") or "all-linear"))
    hidden = base_causal_lm.config.get_text_config().hidden_size
    return ValueModel(backbone, hidden)


class PolicyAndValue(nn.Module):
    """Policy and critic in one module, so one optimiser and one DDP wrapper cover both (as TRL does)."""

    def __init__(self, policy: nn.Module, critic: ValueModel):
        super().__init__()
        self.policy, self.critic = policy, critic

    def forward(self, query, query_mask, response, resp_mask):
        logits = forward_logits(self.policy, query, query_mask, response, resp_mask)
        ids = torch.cat([query, response], 1)
        mask = torch.cat([query_mask, resp_mask.to(query_mask.dtype)], 1)
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        v = self.critic(ids, mask, pos)
        Q = query.shape[1]
        return logits, v[:, Q - 1:-1]


class LMPPO(LMAlgorithm):
    """PPO on an LM: per-token KL penalty, score at the last token, GAE, clipped policy and value losses."""

    name = "ppo"
    Config = PPOConfig
    models_held = ("policy", "critic", "reward model")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.wrapper = PolicyAndValue(unwrap(ctx.policy.model), ctx.critic)

    def trainable(self) -> nn.Module:
        return self.wrapper

    def forward(self, q, qm, resp, mask):
        return self.ctx.prepared(q, qm, resp, mask)

    def update(self, q, qm) -> LMStep:
        cfg, pol = self.config, self.ctx.policy
        q, qm = left_pad(q, qm, pol.pad_id)
        y = self.sample(q, qm)
        ro = self.rollout_stats(q, qm, y)
        ro["resp"] = y
        mask = ro["mask"]
        with torch.no_grad():
            _, v_old = self.forward(q, qm, y, mask)
            v_old = v_old * mask
            rew = -cfg.beta * (ro["lp"] - ro["ref"]) * mask
            last = last_token_index(mask)
            rew[torch.arange(len(y)), last] += ro["score"]
            if cfg.whiten_rewards:
                rew = whiten(rew, mask, shift_mean=False)
            adv, ret = gae(rew, v_old, mask, cfg.gamma, cfg.lam)
            adv = whiten(adv, mask)
        lp_old = ro["lp"]
        self.last_vf = []

        def loss_fn(i):
            pg, vf = self.batch_loss(q[i], qm[i], y[i], mask[i], lp_old[i], adv[i], v_old[i], ret[i])
            self.last_vf.append(float(vf.detach()))
            return pg + cfg.vf_coef * vf

        loss = self.optimise(len(y), cfg.epochs, loss_fn)
        stats = self.trl_stats(ro, cfg.beta)
        stats["value_loss"] = torch.tensor([float(np.mean(self.last_vf))])
        return LMStep(loss, len(y), len(y), stats)


    def batch_loss(self, q, qm, y, mask, lp_old, adv, v_old, ret):
        """(clipped policy loss, value loss) of one minibatch over its valid tokens (token-level PPO)."""
        cfg, pol = self.config, self.ctx.policy
        m = mask.bool()
        logits, v = self.forward(q, qm, y, mask)
        lp = token_logprobs(logits, y, pol.temperature, pol.suppress, mask)
        pg = ppo_clip_loss((lp - lp_old)[m], adv[m], cfg.clip_eps)
        return pg, value_loss(v[m], v_old[m], ret[m], cfg.value_clip or None)


# ----- RLOO --------------------------------------------------------------------------------------
class LMRLOO(LMAlgorithm):
    """RLOO: k samples per prompt, sequence reward r - beta·KL, leave-one-out baseline (Ahmadian et al. 2024)."""

    name = "rloo"
    Config = RLOOConfig

    def update(self, q, qm) -> LMStep:
        cfg, pol = self.config, self.ctx.policy
        B, k = len(q), cfg.k
        qk, qmk = q.repeat_interleave(k, 0), qm.repeat_interleave(k, 0)
        y = self.sample(qk, qmk)
        ro = self.rollout_stats(qk, qmk, y)
        ro["resp"] = y
        lp_t = ro["lp"].sum(1)
        r = kl_shaped_reward(ro["score"], lp_t, ro["ref"].sum(1), cfg.beta)
        adv = leave_one_out_advantage(r.view(B, k)).reshape(-1)
        if cfg.normalize_advantage:
            adv = whiten(adv)

        def loss_fn(i):
            return ppo_clip_loss(pol.seq_logprob(qk[i], qmk[i], y[i]) - lp_t[i], adv[i], cfg.clip_eps)

        loss = self.optimise(B * k, cfg.epochs, loss_fn)
        return LMStep(loss, B * k, B * k, self.trl_stats(ro, cfg.beta))


# ----- DPO ---------------------------------------------------------------------------------------
class LMDPO(LMAlgorithm):
    """DPO (Rafailov et al. 2023): offline on prompt/chosen/rejected rows (reference log-probs
    precomputed once), or online with two samples from pi_t ranked by the reward each round."""

    name = "dpo"
    Config = DPOConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.models_held = ("policy", "reward model") if config.mode == "online" else ("policy",)
        self.needs_reward = config.mode == "online"
        self.needs_prompts = config.mode == "online"
        if config.mode == "offline":
            from testbed.llm.data import load_pairs
            self.data = load_pairs(config.dataset, ctx.policy, ctx.train.max_prompt_length)
            with torch.no_grad(), logprob_temperature(ctx.policy, config.logprob_temperature):  # reference log-probs
                self.ref_c = self._ref_seq(self.data["query"], self.data["query_mask"], self.data["chosen"])
                self.ref_r = self._ref_seq(self.data["query"], self.data["query_mask"], self.data["rejected"])
            self.cursor, self.order = 0, ctx.rng.permutation(len(self.data["query"]))

    def _ref_seq(self, q, qm, y):
        pol, out = self.ctx.policy, []
        for s in range(0, len(q), 64):
            if pol.ref_kind in ("adapter", "copy"):
                out.append(pol.ref_logprobs(q[s:s + 64], qm[s:s + 64], y[s:s + 64]).sum(1))
            else:
                out.append(pol.seq_logprob(q[s:s + 64], qm[s:s + 64], y[s:s + 64]))
        return torch.cat(out)

    def next_rows(self, n: int) -> np.ndarray:
        idx = []
        while len(idx) < n:
            if self.cursor >= len(self.order):
                self.order, self.cursor = self.ctx.rng.permutation(len(self.order)), 0
            take = self.order[self.cursor:self.cursor + n - len(idx)]
            idx.extend(take.tolist())
            self.cursor += len(take)
        return np.asarray(idx)

    def update(self, q, qm) -> LMStep:
        cfg = self.config
        if cfg.mode == "offline":
            rows = self.shard(self.next_rows(self.ctx.train.batch))
            d = self.data
            q, qm, yc, yr = d["query"][rows], d["query_mask"][rows], d["chosen"][rows], d["rejected"][rows]
            ref_c, ref_r = self.ref_c[rows], self.ref_r[rows]
            weight = torch.ones(len(rows))
            stats, samples = {}, 0
        else:
            B = len(q)
            y = self.sample(_cat(q, q), _cat(qm, qm))  # both samples of every prompt in one generate call
            y1, y2 = y[:B], y[B:]
            with logprob_temperature(self.ctx.policy, cfg.logprob_temperature):
                ro = self.rollout_stats(_cat(q, q), _cat(qm, qm), _cat(y1, y2))
            ro["resp"] = _cat(y1, y2)
            s1, s2 = ro["score"][:B], ro["score"][B:]
            first = (s1 >= s2)[:, None]
            yc, yr = torch.where(first, y1, y2), torch.where(first, y2, y1)
            ref = ro["ref"].sum(1)
            ref_c, ref_r = torch.where(first[:, 0], ref[:B], ref[B:]), torch.where(first[:, 0], ref[B:], ref[:B])
            weight = (s1 != s2).float()  # ties carry no preference
            stats, samples = self.trl_stats(ro, 0.0), 2 * B

        def loss_fn(i):
            return self.batch_loss(q[i], qm[i], yc[i], yr[i], ref_c[i], ref_r[i], weight[i])

        loss = self.optimise(len(q), cfg.epochs, loss_fn)
        return LMStep(loss, samples, samples, stats)

    def batch_loss(self, q, qm, yc, yr, ref_c, ref_r, weight=None):
        """The DPO loss of one minibatch (pairs with weight 0, ties, carry no preference)."""
        pol, n = self.ctx.policy, len(q)
        with logprob_temperature(pol, self.config.logprob_temperature):
            new = pol.seq_logprob(_cat(q, q), _cat(qm, qm), _cat(yc, yr))
        if weight is not None and float(weight.sum()) == 0:
            return new.sum() * 0.0
        return dpo_loss(new[:n] - ref_c, new[n:] - ref_r, self.config.beta, weight)

    def shard(self, rows: np.ndarray) -> np.ndarray:
        ctx = self.ctx
        return rows if ctx.train.rollouts == "replicated" else np.array_split(rows, ctx.world)[ctx.rank]


class LMSFT(LMAlgorithm):
    """Supervised fine-tuning on prompt/completion rows: token-mean negative log-likelihood (temperature 1)."""

    name = "sft"
    Config = SFTConfig
    models_held = ("policy",)
    needs_reward = False
    needs_prompts = False

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        from testbed.llm.data import load_completions
        self.data = load_completions(config.dataset, ctx.policy, ctx.train.max_prompt_length)
        self.cursor, self.order = 0, ctx.rng.permutation(len(self.data["query"]))

    next_rows = LMDPO.next_rows
    shard = LMDPO.shard

    def update(self, q, qm) -> LMStep:
        pol = self.ctx.policy
        rows = self.shard(self.next_rows(self.ctx.train.batch))
        d = self.data
        q, qm, y = d["query"][rows], d["query_mask"][rows], d["completion"][rows]

        def loss_fn(i):
            mask = response_mask(y[i], pol.eos_id)
            logits = forward_logits(self.ctx.prepared, q[i], qm[i], y[i], mask)
            return sft_loss(token_logprobs(logits, y[i], 1.0, pol.suppress, mask), mask)

        loss = self.optimise(len(rows), self.config.epochs, loss_fn)
        return LMStep(loss, 0, 0, {})


LM_ALGORITHMS: dict[str, type[LMAlgorithm]] = {c.name: c for c in (LMREBEL, LMPPO, LMRLOO, LMDPO, LMSFT)}
