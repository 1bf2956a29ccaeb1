"""A user's rule on the LM back-end: ``algorithms: [{module: mypkg.mod:MyRule, eta: 2}]`` in an LM spec.

The rule is the object of :mod:`testbed.algorithms.user` (and of ``testbed check``) with one more method,
``lm_update(api, query, query_mask) -> loss`` (a float; None: the mean of what ``api.optimise``
returned), called once per iteration with the iteration's prompts (left-padded token ids and mask,
[B, Q]). :class:`LMAPI` is all it may see of the back-end:

- ``sample(q, qm, ref=False) -> y`` [B, L]: one response per prompt row from pi_t (``ref``: from pi_ref),
  fixed length ``max_new_tokens``, padded after the first EOS;
- ``rollout(q, qm, y) -> {"score", "lp", "ref", "mask"}``: the reward (one query per response; the
  missing-EOS penalty applied as the spec says) and the token log-probs [B, L] of pi_t and pi_ref
  (constants: no gradient), 0 after the first EOS, with the response mask;
- ``seq_logprob(q, qm, y) -> [B]`` and ``logprobs(q, qm, y) -> (token log-probs [B, L], mask)``: the same
  under the current parameters, differentiable;
- ``optimise(loss_fn, n, epochs=1) -> mean loss``: the back-end's solver — ``epochs`` passes of shuffled
  minibatches of AdamW over ``n`` items, ``loss_fn(idx)`` the mean loss over the items ``idx`` (a
  LongTensor); under ``testbed check`` the same call minimises the loss to convergence instead
  (:mod:`testbed.llm.conformance`).
- ``eos_id``, ``pad_id``, ``max_new_tokens``.

The rows of metrics.csv (``objective/scores``, ``objective/kl``, ...) are computed from the responses
the rule scored through ``rollout``, with the rule's ``beta`` (0 if it has none) as the KL coefficient.
"""

from __future__ import annotations

import torch

from testbed.errors import InputError


class LMAPI:
    """What an LM rule may see of the back-end (``ctx``: an :class:`~testbed.llm.backend.LMBackend`)."""

    def __init__(self, ctx, config):
        self._ctx, self._config = ctx, config
        pol = ctx.policy
        self.eos_id, self.pad_id, self.max_new_tokens = pol.eos_id, pol.pad_id, pol.max_new_tokens
        self.samples = self.queries = 0
        self.rollouts: list[dict] = []
        self.losses: list[float] = []

    def sample(self, q, qm, ref: bool = False) -> torch.Tensor:
        y = self._ctx.sample(q, qm, ref=ref)
        self.samples += len(y)
        return y

    def rollout(self, q, qm, y) -> dict:
        ro = self._ctx.rollout_stats(q, qm, y)
        self.queries += len(y)
        self.rollouts.append(ro)
        return {k: ro[k] for k in ("score", "lp", "ref", "mask")}

    def logprobs(self, q, qm, y):
        return self._ctx.policy.logprobs(q, qm, y)

    def seq_logprob(self, q, qm, y) -> torch.Tensor:
        return self._ctx.policy.seq_logprob(q, qm, y)

    def optimise(self, loss_fn, n: int, epochs: int = 1) -> float:
        loss = self._ctx.optimise(self._config, int(n), int(epochs), loss_fn)
        self.losses.append(loss)
        return loss

    def stats(self, beta: float) -> dict:
        """The TRL-style statistics of every response scored in this update (metrics.csv's objective/*)."""
        if not self.rollouts:
            return {}
        ro = {k: torch.cat([r[k] for r in self.rollouts]) for k in ("score", "lp", "ref", "mask", "resp")}
        return self._ctx.trl_stats(ro, beta)


def lm_update(rule, ctx, config, q, qm):
    """One iteration of ``rule`` on the LM back-end: (loss, responses drawn, reward queries, statistics)."""
    api = LMAPI(ctx, config)
    loss = rule.lm_update(api, q, qm)
    if loss is None:
        if not api.losses:
            raise InputError(f"user rule {getattr(rule, 'name', type(rule).__name__)!r}: lm_update returned no loss "
                             "and never called api.optimise (return the loss, or solve through api.optimise)")
        loss = sum(api.losses) / len(api.losses)
    return float(loss), api.samples, api.queries, api.stats(float(getattr(rule, "beta", 0.0) or 0.0))
