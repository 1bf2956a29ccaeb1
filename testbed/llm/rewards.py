"""LM rewards: a reward-model wrapper, programmatic reward functions, the missing-EOS penalty, and a
Bradley–Terry reward-model trainer.

Every reward source maps (left-padded prompts, responses truncated after the first EOS) to one
score per response. :func:`score_responses` then applies the missing-EOS penalty exactly once;
the KL shaping r - beta·(ln pi_t - ln pi_ref) is the shared :func:`testbed.losses.kl_shaped_reward`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from testbed.errors import InputError
from testbed.llm.policy import first_eos_index, left_pad, padded_inputs, response_mask, unwrap
from testbed.losses import dpo_loss


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row (the last non-pad token). Shape [B]."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device)[None, :].expand_as(mask)
    return torch.where(mask.bool(), pos, -1).max(dim=1).values


def score_head(model):
    """The one-label head of a decoder's sequence classifier, applied at every token (``score``; encoder classifiers,
    which pool first, are refused when loaded: :func:`testbed.llm.models.load_reward_model`)."""
    return unwrap(model).score


def last_token_score(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row of ``per_token`` [B, T] at its last mask-1 position (the last non-pad token). Shape [B]."""
    return per_token.gather(1, last_token_index(mask)[:, None])[:, 0]


def score_offset(model) -> float:
    """The constant a re-centred reward model adds to its head's output (``config.score_offset``, 0 if none; set by
    :func:`testbed.llm.rm.recentre`)."""
    return float(getattr(unwrap(model).config, "score_offset", 0.0) or 0.0)


class RewardModel:
    """``AutoModelForSequenceClassification`` (one label) read at the last non-pad token.

    The score head is applied to the backbone's last hidden states and read at the last position
    whose attention mask is 1, so left-padded prompts and right-padded (post-EOS) responses are
    handled the same way the official code and TRL's ``get_reward`` do.
    """

    def __init__(self, model, pad_id: int, eos_id: int):
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id

    def scores_at_every_token(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = unwrap(self.model)
        h = getattr(m, m.base_model_prefix)(**padded_inputs(ids, mask)).last_hidden_state
        return score_head(m)(h)[..., 0].float() + score_offset(m)

    def score(self, query: torch.Tensor, query_mask: torch.Tensor, response: torch.Tensor,
              grad: bool = False) -> torch.Tensor:
        query, query_mask = left_pad(query, query_mask, self.pad_id)
        ids = torch.cat([query, response], 1)
        mask = torch.cat([query_mask, response_mask(response, self.eos_id).to(query_mask.dtype)], 1)
        with torch.set_grad_enabled(grad):
            return last_token_score(self.scores_at_every_token(ids, mask), mask)

    __call__ = score


def _response_tokens(response: torch.Tensor, eos_id: int) -> list[list[int]]:
    """Each response's tokens before the first EOS."""
    end = first_eos_index(response, eos_id).tolist()
    return [row[:e] for row, e in zip(response.tolist(), end)]


class FunctionReward:
    """A Python reward function on token ids: ``fn(prompt_ids, response_ids) -> float`` per pair, with
    ``response_ids`` the tokens before the first EOS and ``prompt_ids`` without padding."""

    def __init__(self, fn: Callable[[list[int], list[int]], float], pad_id: int, eos_id: int):
        self.fn, self.pad_id, self.eos_id = fn, pad_id, eos_id

    def __call__(self, query, query_mask, response, grad: bool = False) -> torch.Tensor:
        prompts = [[t for t, m in zip(row, mrow) if m] for row, mrow in zip(query.tolist(), query_mask.tolist())]
        vals = [float(self.fn(p, r)) for p, r in zip(prompts, _response_tokens(response, self.eos_id))]
        return torch.tensor(vals, dtype=torch.float32, device=response.device)


def count_token_reward(token_id: int, length: int) -> Callable[[list[int], list[int]], float]:
    """Toy reward: (occurrences of ``token_id`` in the response before EOS)/``length``, in [0, 1]."""
    def fn(prompt: list[int], response: list[int]) -> float:
        return sum(t == token_id for t in response) / length
    return fn


def copy_prompt_reward(prompt: list[int], response: list[int]) -> float:
    """Toy reward: the share of prompt tokens the response repeats in order from its start, in [0, 1]."""
    n = sum(a == b for a, b in zip(prompt, response))
    return n / max(len(prompt), 1)


REWARD_FUNCTIONS = ("count_token", "copy_prompt")


def apply_missing_eos_penalty(scores: torch.Tensor, eos_found: torch.Tensor, penalty: float | None,
                              mode: str = "replace") -> torch.Tensor:
    """Penalise responses without an EOS, once.

    ``replace`` (the official REBEL/TL;DR code): the score becomes -penalty (``penalty_reward_value
    = -1``). ``subtract`` (TRL's ``missing_eos_penalty``): the score drops by ``penalty``.
    ``penalty`` None: no penalty.
    """
    if penalty is None:
        return scores
    if mode == "replace":
        return torch.where(eos_found, scores, torch.full_like(scores, -penalty))
    if mode == "subtract":
        return torch.where(eos_found, scores, scores - penalty)
    raise ValueError(f"mode must be replace or subtract (got {mode!r})")


def score_responses(reward, query, query_mask, response, eos_id: int, penalty: float | None,
                    mode: str = "replace", test: str = "eos", pad_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores from ``reward`` (a RewardModel or FunctionReward) and the penalised scores.

    ``test``: what counts as finished. ``eos``: the response holds an EOS. ``pad`` (the official REBEL
    code's ``contain_pad_token``): it holds a pad token, so a response whose only EOS is its last
    token is penalised too (nothing follows it to become padding)."""
    raw = reward(query, query_mask, response)
    if test == "pad" and pad_id is not None and pad_id != eos_id:
        found = (response == pad_id).any(1)
    else:
        found = (response == eos_id).any(1)
    return raw, apply_missing_eos_penalty(raw, found, penalty, mode)


def train_bradley_terry(rm: RewardModel, query, query_mask, chosen, rejected, *, epochs: int = 10, lr: float = 1e-3,
                        minibatch: int = 32, seed: int = 0) -> list[float]:
    """Fit a reward model to (prompt, chosen, rejected) by Bradley–Terry maximum likelihood.

    L = -mean ln sigma(r(x, y_w) - r(x, y_l)) — :func:`testbed.losses.dpo_loss` with beta = 1 and
    the scores in place of log-ratios (Ouyang et al. 2022, eq. 1). Responses are token tensors
    [N, L] truncated after EOS. Returns the loss per epoch.
    """
    if not (len(query) == len(chosen) == len(rejected)):
        raise InputError("prompt, chosen and rejected must have one length")
    model = rm.model
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    N, losses = len(query), []
    for _ in range(epochs):
        perm, tot = rng.permutation(N), 0.0
        for s in range(0, N, minibatch):
            i = torch.as_tensor(perm[s:s + minibatch])
            rc = rm.score(query[i], query_mask[i], chosen[i], grad=True)
            rr = rm.score(query[i], query_mask[i], rejected[i], grad=True)
            loss = dpo_loss(rc, rr, beta=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(i)
        losses.append(tot / N)
    model.eval()
    return losses
