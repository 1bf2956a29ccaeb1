"""Supervised fine-tuning on prompt/completion rows: the token-mean negative log-likelihood at temperature 1
(:func:`testbed.losses.sft_loss`), the LM back-end's AdamW solver. The paper's SFT baseline and the first
stage of its TL;DR pipeline."""

from __future__ import annotations

from dataclasses import dataclass

from testbed.algorithms.base import Algorithm, Step, count, grad_accum_field, minibatch_field, path
from testbed.errors import InputError
from testbed.losses import sft_loss


@dataclass
class SFTConfig:
    dataset: str = path("JSONL with prompt, completion (text)")
    epochs: int = count(1, "passes over each batch")
    minibatch: int = minibatch_field(64, "rows per optimiser step")
    grad_accum: int = grad_accum_field()

    def validate(self, where: str) -> None:
        if not self.dataset:
            raise InputError(f"{where}.dataset: SFT needs a JSONL file with prompt, completion")


class SFT(Algorithm):
    name = "sft"
    Config = SFTConfig
    summary = "supervised fine-tuning: token-mean NLL of dataset completions"
    tracks = ("lm",)
    tests = ("test_sft_fits_demonstrations",)

    @staticmethod
    def needs_reward(config) -> bool:
        return False

    @staticmethod
    def uses_reference(config) -> bool:
        return False

    @staticmethod
    def needs_prompts(config) -> bool:
        return False

    def __init__(self, config, problem, rng):
        super().__init__(config, problem, rng)
        if self.ctx is not None:
            self.data = self.ctx.load_completions(config.dataset)
            self.cursor, self.order = 0, self.ctx.rng.permutation(len(self.data["query"]))

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

