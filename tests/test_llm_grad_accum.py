"""grad_accum gives the same optimiser step as one backward pass over the minibatch (README: "the same optimiser
steps with fewer sequences per backward pass"): REBEL, RLOO and online DPO, whose ties (weight 0) fall unevenly
across the micro-batches. lr 10 and adam_eps 1e3 make AdamW's first step linear in the gradient, so a different
weighting of the micro-batches shows as a different step."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.llm.spec import parse_lm_spec  # noqa: E402
from testbed.llm.train import build  # noqa: E402

PROMPTS = ["good cat", "red dog sun", "one", "blue moon up down"] * 4


def step(algorithm: dict, G: int):
    spec = parse_lm_spec(toy_spec({**algorithm, "grad_accum": G}, batch=16, minibatch=16, lr=10.0, adam_eps=1e3,
                                  max_grad_norm=0))
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    before = [p.detach().clone() for p in ctx.policy.model.parameters()]
    torch.manual_seed(5)
    q, qm = ctx.policy.encode(PROMPTS)
    st = alg.lm_update(q, qm)
    return torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(ctx.policy.model.parameters(), before)]), st


@pytest.mark.parametrize("algorithm", [{"name": "rebel", "epochs": 1}, {"name": "rloo", "k": 2},
                                       {"name": "dpo", "mode": "online"}], ids=lambda a: a["name"])
def test_grad_accum_does_not_change_the_step(algorithm):
    d1, st = step(algorithm, 1)
    d4, _ = step(algorithm, 4)
    if algorithm["name"] == "dpo":  # the case that matters: unequal non-tie counts per micro-batch of 4 pairs
        s = st.extras["objective/scores"]
        per_micro = (s[:16] != s[16:]).float().reshape(4, 4).sum(1)
        assert per_micro.min() < per_micro.max() and per_micro.sum() > 0, per_micro
    assert d1.norm() > 0
    assert float((d4 - d1).norm() / d1.norm()) < 1e-5
