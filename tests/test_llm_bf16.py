"""bf16 autocast on CPU for the toy LM run (``accelerate: {mixed_precision: bf16}``): the CUDA path's mixed
precision exercised where it can be. The same metrics schema as fp32, every value finite, REBEL improving the
toy task by a stated margin (half the fp32 test's, over the same 20 iterations), and the autocast log-probs
within the bf16 tolerance of testbed/llm/precision.py of fp32's."""

import math

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.llm.spec import parse_lm_spec  # noqa: E402
from testbed.llm.train import run_one  # noqa: E402

BF16_MARGIN, ITERS = 0.125, 20


def _run(mixed: str, iterations: int):
    raw = toy_spec({"name": "rebel"}, iterations=iterations)
    raw["accelerate"] = {"mixed_precision": mixed}
    spec = parse_lm_spec(raw)
    name, cfg, _ = spec.algorithms[0]
    rows, _, model, _ = run_one(spec, name, cfg, 0, f"{name}-{mixed}")
    return rows, model


def test_the_bf16_toy_run_is_finite_and_improves():
    rows, _ = _run("bf16", ITERS)
    ref, _ = _run("no", 1)
    assert list(rows[0]) == list(ref[0])  # the same metrics schema
    assert rows[1]["loss"] != ref[1]["loss"]  # the same first batch's loss, computed under autocast: bf16 did run
    for r in rows:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    start, end = rows[0]["eval/scores"], rows[-1]["eval/scores"]
    assert end - start >= BF16_MARGIN, (start, end)


def test_bf16_autocast_log_probs_are_within_the_stated_tolerance():
    from testbed.llm import precision
    from testbed.llm.policy import forward_logits, token_logprobs
    from testbed.llm.toy import tiny_causal_lm

    model = tiny_causal_lm("gpt2", seed=0)
    g = torch.Generator().manual_seed(0)
    q, y = torch.randint(3, 15, (8, 4), generator=g), torch.randint(3, 15, (8, 6), generator=g)
    m = torch.ones_like(y)
    with torch.no_grad():
        fp32 = token_logprobs(forward_logits(model, q, torch.ones_like(q), y, m), y, 1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logprobs(forward_logits(model, q, torch.ones_like(q), y, m), y, 1.0)
    err = float((bf16.float() - fp32).abs().max())
    assert 0 < err <= precision.BF16_LOGPROB_ATOL, err  # > 0: autocast did run in bf16
