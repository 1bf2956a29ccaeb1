"""Evaluation of an LM policy on the eval prompts, in micro-batches (``train.eval_micro_batch``).

``eval_micro_batch: 0`` (the default): one ``generate`` call on every eval prompt, sampling from the torch RNG
seeded per evaluation (the runs so far). ``eval_micro_batch: N``: ``generate`` calls of at most N prompts, so a
validation split of any size fits in memory; each prompt then draws its tokens from its own seeded stream by the
Gumbel-max trick (argmax of logits/temperature after top-k/top-p filtering, plus Gumbel noise: an exact sample of
the same distribution; Gumbel 1954, Maddison et al. 2014), so the samples and the metrics are the same for every N
(and for any order or grouping of the prompts), up to the model's own batch-size rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from testbed.llm.rewards import score_responses


class RowGumbel:
    """A ``transformers`` logits processor: per row i, add Gumbel noise from generator i (float64, on the CPU)."""

    def __init__(self, seeds: list[int]):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[-1]
        u = torch.stack([torch.rand(V, generator=g, dtype=torch.float64) for g in self.gens])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
        return scores + gumbel.to(device=scores.device, dtype=scores.dtype)


def row_sampler(policy, seeds: list[int]):
    """Logits processors that make greedy decoding sample ``policy``'s distribution, one stream per row."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    procs = [TemperatureLogitsWarper(policy.temperature)]
    if policy.top_k:
        procs.append(TopKLogitsWarper(policy.top_k))
    if policy.top_p < 1:
        procs.append(TopPLogitsWarper(policy.top_p))
    return LogitsProcessorList([*procs, RowGumbel(seeds)])


def prompt_seeds(stream: int, n: int) -> list[int]:
    """One seed per eval prompt, from the evaluation's stream (numpy SeedSequence: independent streams)."""
    return [int(s) for s in np.random.SeedSequence(stream).generate_state(n, dtype=np.uint64) >> np.uint64(1)]


@torch.no_grad()
def evaluate(ctx, prompts: list[str], seed: int, t: int) -> tuple[float | None, list[dict]]:
    """Mean (penalised) score of one sample per eval prompt, and the generations; own RNG stream."""
    pol, tr = ctx.policy, ctx.train
    stream = 10_000_019 * (seed + 1) + t
    micro = getattr(tr, "eval_micro_batch", 0)
    scores, texts = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream)
        seeds = prompt_seeds(stream, len(prompts)) if micro else None
        for s in range(0, len(prompts), micro or max(len(prompts), 1)):
            q, qm = pol.encode(prompts[s:s + (micro or len(prompts))], tr.max_prompt_length)
            y = pol.generate(q, qm, sampler=row_sampler(pol, seeds[s:s + micro]) if micro else None)
            if ctx.reward is not None:
                scores.append(score_responses(ctx.reward, q, qm, y, pol.eos_id, tr.missing_eos_penalty,
                                              tr.missing_eos_mode, tr.missing_eos_test, pol.pad_id)[1])
            texts += pol.decode(y)
    score = torch.cat(scores) if scores else None
    rows = [{"iteration": t, "prompt": p, "response": r, **({"score": float(s)} if score is not None else {})}
            for p, r, s in zip(prompts, texts, score if score is not None else [None] * len(prompts))]
    return (float(score.mean()) if score is not None else None), rows
