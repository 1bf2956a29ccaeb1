"""The LM part of the ``mirror_descent`` battery, for rules with ``lm_update`` (``"lm"`` in their ``kinds``).

It lives in the LM back-end (the core never imports it): importing this module registers it with
:data:`testbed.experiments.conformance_exact.STEP_BATTERIES`, as ``testbed check`` does.

The rule's ``lm_update(api, query, query_mask)`` runs on the LM interface of a training run
(:class:`~testbed.algorithms.user_lm.LMAPI`: the same object, the same log-probability code of
:class:`~testbed.llm.policy.LMPolicy`, EOS masking included), with a toy causal LM whose parameters are a
logit table per (depth, prompt token, previous token) — :class:`TreeLM`, a tabular policy over response
*sequences* — and ``api.optimise`` minimising the rule's loss to convergence (full-batch L-BFGS in float64,
whatever the ``epochs``: REBEL's regression has one minimiser set, so any number of passes of an exact
solver reaches it). Exact REBEL's regression on the sampled pairs is then solved with zero residual
(the targets are realisable by a tabular policy), so the update must be the mirror-descent step,

    ln pi_t+1(s|x) = ln pi_t(s|x) + eta·(r(x, s) - beta·ln(pi_t(s|x) / pi_ref(s|x))) + c(x),

on every response s observed at prompt x (DESIGN.md §REBEL, testbed/THEORY.md §C), at the claimed eta,
at eta = 0.3 and 3, and at beta = 0.2 when the rule has a ``beta``:

- ``one-token``: one-token prompts and responses — the update on a one-token LM is the tabular update
  (the cross-track identity of tests/test_cross_track.py, for any rule);
- ``EOS``: two-token responses over {EOS, good, bad} (every other token has probability ~1e-13), so a
  response ends at its first EOS after one or two tokens and its log-probability is the sum of its token
  log-probabilities up to and including that EOS: a mean over tokens, or log-probabilities read past the
  EOS, give another step.

Each row reports the error max_{x, s} |Δ(s) - Δ_md(s)| after removing each prompt's constant, and the step
ratio <Δ, Δ_md>/|Δ_md|² on centred values (1 correct, 2 doubled, 0 no move, -1 sign flip).
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.experiments import conformance_exact
from testbed.experiments.conformance_exact import fresh, settings, step_attrs

LM_STEP_TOL = 1e-6
"""Tolerance on the log-probabilities. The bandit rows compare a closed-form solve (1e-8); here the rule's loss is
minimised by L-BFGS in float64, which stops near, not at, the minimiser: the reference rule measured 1.2e-9 to
2.6e-8 (so 1e-8 would fail it, 1e-6 leaves a 40x margin), while every mutant is off by more than 1e-3."""
PROMPTS = (3, 4, 5, 6)  # one-token prompts: toy tokenizer ids of good, bad, red, blue
PAIRS_PER_PROMPT = 48


class TreeLM(torch.nn.Module):
    """A causal LM whose next-token logits after the prompt token x and the previous token p at response depth
    d are ``table[d, x, p]``: a tabular (tree-structured) policy over response sequences, for one-token prompts."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float64).clone())

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0, **kw):
        from transformers.modeling_outputs import CausalLMOutput

        first = (attention_mask.long().argmax(1) if attention_mask is not None else torch.zeros(len(input_ids), dtype=torch.long))
        x = input_ids.gather(1, first[:, None]).expand_as(input_ids)
        depth = (position_ids if position_ids is not None else torch.arange(input_ids.shape[1]).expand_as(input_ids))
        depth = depth.clamp(0, self.table.shape[0] - 1)
        logits = self.table[depth, x, input_ids]
        return CausalLMOutput(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class HarnessBackend:
    """The back-end the LM battery gives :class:`LMAPI`: exact sampling from the table (its own generator),
    a reward table over response sequences, and a solver that minimises the loss to convergence."""

    def __init__(self, policy, reward: dict, seed: int):
        self.policy, self.reward = policy, reward
        self.gen = torch.Generator().manual_seed(seed)
        self.seen: dict = {}  # every response the rule drew, by (prompt token, tokens that count)

    @torch.no_grad()
    def sample(self, q, qm, ref: bool = False):
        """Token by token from the table (``generate``'s distribution: logits / temperature, pad suppressed), then
        padding after the first EOS, as :meth:`~testbed.llm.policy.LMPolicy.generate` returns it."""
        from testbed.llm.policy import _suppressed, truncate_after_eos

        pol = self.policy
        model = pol.ref_model if ref else pol.model
        y = torch.zeros((len(q), 0), dtype=torch.long)
        for _ in range(pol.max_new_tokens):
            ids = torch.cat([q, y], 1)
            mask = torch.ones_like(ids)
            lg = model(input_ids=ids, attention_mask=mask, position_ids=mask.cumsum(1) - 1).logits[:, -1]
            lg = _suppressed(lg / pol.temperature, pol.suppress)
            y = torch.cat([y, torch.multinomial(torch.softmax(lg, -1), 1, generator=self.gen)], 1)
        y = truncate_after_eos(y, pol.eos_id, pol.pad_id)
        for a, b in zip(q[:, -1], y):
            self.seen[self.key(int(a), b)] = b
        return y

    def key(self, x: int, y: torch.Tensor) -> tuple:
        """A response as the tokens that count: up to and including the first EOS."""
        toks, eos = [int(t) for t in y], self.policy.eos_id
        return (x, tuple(toks[:toks.index(eos) + 1]) if eos in toks else tuple(toks))

    def score(self, q, y) -> torch.Tensor:
        return torch.as_tensor([self.reward[self.key(int(a), b)] for a, b in zip(q[:, -1], y)], dtype=torch.float64)

    @torch.no_grad()
    def rollout_stats(self, q, qm, y) -> dict:
        lp, mask = self.policy.logprobs(q, qm, y)
        ref = self.policy.ref_logprobs(q, qm, y)
        s = self.score(q, y)
        return {"score": s, "raw": s, "lp": lp, "ref": ref, "mask": mask, "resp": y}

    def optimise(self, config, n: int, epochs: int, loss_fn) -> float:
        params = [p for p in self.policy.model.parameters() if p.requires_grad]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-18,
                                history_size=100, line_search_fn="strong_wolfe")
        idx = torch.arange(n)

        def closure():
            opt.zero_grad()
            loss = loss_fn(idx)
            loss.backward()
            return loss

        first = float(closure().detach())
        for _ in range(4):
            opt.step(closure)
        return first

    def trl_stats(self, ro: dict, beta: float) -> dict:
        return {}


def _setting(length: int, seed: int):
    """(start table, reference table, reward per (prompt, response)) of one battery instance."""
    from testbed.llm.toy import WORDS

    V = len(WORDS) + 3
    g = np.random.default_rng(seed)

    def table():
        t = np.full((length + 1, V, V, V), -30.0)
        if length == 1:
            t[...] = g.normal(size=t.shape) * 0.4
        else:  # responses over {EOS, good, bad}: 1 + 2·3 sequences per prompt
            t[..., [1, 3, 4]] = g.normal(size=t[..., [1, 3, 4]].shape) * 0.4
        t[..., 0] = -30.0  # the pad token is never sampled (it is suppressed anyway)
        return torch.as_tensor(t)

    start, ref = table(), table()
    toks = range(1, V) if length == 1 else (1, 3, 4)
    seqs = [(a,) for a in toks] if length == 1 else [(1,)] + [(a, b) for a in (3, 4) for b in (1, 3, 4)]
    reward = {(x, s): float(g.normal()) for x in PROMPTS for s in seqs}
    return start, ref, reward


def lm_step(factory, eta: float, beta: float, length: int, seed: int):
    """One ``lm_update`` of a fresh rule at (eta, beta): (error, step ratio, responses seen)."""
    from testbed.algorithms.user_lm import LMAPI
    from testbed.llm.policy import LMPolicy
    from testbed.llm.toy import toy_tokenizer

    start, ref, reward = _setting(length, seed)
    pol = LMPolicy(TreeLM(ref), toy_tokenizer(), temperature=1.0, max_new_tokens=length, ref="copy")
    pol.model = TreeLM(start)
    ctx = HarnessBackend(pol, reward, seed)
    rule = fresh(factory, **step_attrs(factory(), eta, beta))
    q = torch.as_tensor(PROMPTS).repeat(PAIRS_PER_PROMPT)[:, None]
    qm = torch.ones_like(q)
    old_model = TreeLM(start)
    rule.lm_update(LMAPI(ctx, None), q, qm)
    seen = ctx.seen
    keys = sorted(seen)
    if not keys:
        raise RuntimeError("the rule's lm_update drew no responses through api.sample")
    Q = torch.as_tensor([[k[0]] for k in keys])
    Y = torch.stack([seen[k] for k in keys])
    with torch.no_grad():
        new = pol.seq_logprob(Q, torch.ones_like(Q), Y).numpy()
        old = pol.seq_logprob(Q, torch.ones_like(Q), Y, model=old_model).numpy()
        lref = pol.ref_logprobs(Q, torch.ones_like(Q), Y).sum(1).numpy()
    r = np.array([reward[k] for k in keys])
    d, want = new - old, eta * (r - beta * (old - lref))
    xs = np.array([k[0] for k in keys])
    err, num, den = 0.0, 0.0, 0.0
    for x in np.unique(xs):
        m = xs == x
        dc, wc = d[m] - d[m].mean(), want[m] - want[m].mean()
        err = max(err, float(np.max(np.abs(dc - wc))))
        num, den = num + float(dc @ wc), den + float(wc @ wc)
    return err, (num / den if den > 0 else float("nan")), len(keys)


def check_step_lm(factory, Result) -> list:
    """The one-token and EOS rows of the battery (see the module docstring)."""
    out = []
    for length, what in ((1, "one-token"), (2, "EOS")):
        for i, (eta, beta) in enumerate(settings(factory())):
            err, ratio, n = lm_step(factory, eta, beta, length, seed=200 + 10 * length + i)
            out.append(Result(f"LM {what} step: mirror descent on the responses seen at eta = {eta:g}, beta = {beta:g}: "
                              f"max |Δ ln pi - Δ_md| (step ratio {ratio:.6g})", f"tree-lm-{length}tok-{n}resp", err,
                              f"<= {LM_STEP_TOL:g}", bool(err <= LM_STEP_TOL)))
    return out


conformance_exact.STEP_BATTERIES["lm"] = check_step_lm  # testbed check's mirror_descent battery, for "lm" rules
