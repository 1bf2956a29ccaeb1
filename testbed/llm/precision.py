"""Mixed precision for the LM track: bf16 autocast on CPU and CUDA, and its stated tolerance.

A spec's ``accelerate: {mixed_precision: bf16}`` makes ``accelerate`` wrap the prepared model's forward in
``torch.autocast(device_type, dtype=torch.bfloat16)`` — on CPU too (torch's CPU autocast), so the toy run exercises
the path a GPU run takes. Weights, gradients and AdamW states stay in the model's dtype (float32 for the tiny
models); matmuls run in bf16; log-probs are taken in float32 from the bf16 logits
(:func:`testbed.llm.policy.token_logprobs`).

:data:`BF16_LOGPROB_ATOL`: a per-token log-prob under bf16 autocast is within 0.02 nats of float32's for the tiny
models (bf16 keeps 8 significant bits: a relative error of 2^-8 ~ 0.004 per rounding; the logits of a 2-layer
model, a few units in size, carry a few roundings each, measured: 0.002 nats on the tiny GPT-2 of tests/gpu/check.py).
"""

from __future__ import annotations

import contextlib

import torch

BF16_LOGPROB_ATOL = 0.02


def autocast(device, precision: str = "no"):
    """``torch.autocast`` for ``precision`` in ("no", "bf16", "fp16") on ``device`` (a string or torch.device)."""
    if precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
