"""Evaluation in micro-batches (``train.eval_micro_batch``, issue 18): the same metrics for micro-batch 1, 5 and the
whole count-limited split (float64 tiny model), generate calls bounded by the micro-batch, and the per-prompt
Gumbel-max sampler draws the policy's distribution."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("transformers")
import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.llm.evaluation import evaluate  # noqa: E402
from testbed.llm.policy import LMPolicy  # noqa: E402
from testbed.llm.spec import parse_lm_spec  # noqa: E402
from testbed.llm.task import make_prompts, make_reward  # noqa: E402
from testbed.llm.toy import tiny_causal_lm, toy_tokenizer  # noqa: E402


def ctx(micro: int, n: int = 13, **train):
    raw = toy_spec({"name": "rebel"}, eval_micro_batch=micro, max_new_tokens=5, **train)
    raw["eval_prompts"] = {"kind": "toy", "count": n, "seed": 1, "min_len": 1, "max_len": 6}
    spec = parse_lm_spec(raw)
    tok = toy_tokenizer()
    model = tiny_causal_lm("gpt2", seed=3).to(torch.float64)
    calls = []
    gen = model.generate
    model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or gen(**kw)
    pol = LMPolicy(model, tok, temperature=spec.train.temperature, top_k=spec.train.top_k, top_p=spec.train.top_p,
                   max_new_tokens=spec.train.max_new_tokens, ref=None)
    c = SimpleNamespace(policy=pol, reward=make_reward(spec, tok, "cpu", None), train=spec.train)
    return c, make_prompts(spec.eval_prompts), calls


@pytest.mark.parametrize("train", [{}, {"top_k": 5, "top_p": 0.9, "temperature": 1.3}], ids=["plain", "top_k_p"])
def test_eval_metrics_do_not_depend_on_the_micro_batch(train):
    out = {}
    for micro in (1, 5, 13):
        c, prompts, calls = ctx(micro, **train)
        assert len(prompts) == 13  # the count-limited split
        out[micro] = evaluate(c, prompts, seed=4, t=7)
        assert calls == [min(micro, 13 - s) for s in range(0, 13, micro)]  # ceil(13 / micro) calls, <= micro each
    assert out[1] == out[5] == out[13]
    assert len({r["response"] for r in out[1][1]}) > 3  # samples, not one greedy answer
    # another evaluation (t) draws other samples
    c, prompts, _ = ctx(5, **train)
    assert evaluate(c, prompts, seed=4, t=8)[1] != out[5][1]


def test_the_per_prompt_sampler_draws_the_policys_distribution():
    c, _, calls = ctx(2000, n=1)
    c.policy.max_new_tokens = 1
    prompts = ["good dog"] * 2000
    _, rows = evaluate(c, prompts, seed=0, t=0)
    pol, tok = c.policy, c.policy.tokenizer
    q, qm = pol.encode(["good dog"])
    with torch.no_grad():
        logits = pol.model(input_ids=q, attention_mask=qm).logits[0, -1] / pol.temperature
    logits[pol.suppress] = -math.inf
    p = torch.softmax(logits, -1).numpy()
    ids = np.array([tok.convert_tokens_to_ids(r["response"].split()[0]) for r in rows])
    freq = np.bincount(ids, minlength=len(p)) / len(ids)
    sd = np.sqrt(p * (1 - p) / len(ids))
    assert np.all(np.abs(freq - p) <= 4.5 * sd + 1e-12), np.max(np.abs(freq - p) / (sd + 1e-12))
