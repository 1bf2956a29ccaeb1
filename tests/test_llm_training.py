"""The algorithms improve the toy task (issue 5 acceptance), and the offline pieces learn.

Toy task: prompts of 2–4 random words, responses of at most 6 tokens from a 2-layer GPT-2 (32
hidden units, random init, temperature 1), reward = (number of "good" tokens before EOS)/6. The
untrained policy scores about 0.04. ``eval/scores`` is the mean reward of one sample per
held-out eval prompt (48 prompts, a fixed RNG stream per evaluation).
"""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.errors import InputError  # noqa: E402
from testbed.llm.spec import parse_lm_spec  # noqa: E402
from testbed.llm.train import run_one  # noqa: E402

REBEL_MARGIN, REBEL_ITERS = 0.25, 20


def run(algorithm: dict, seed: int = 0, **train):
    spec = parse_lm_spec(toy_spec(algorithm, seeds=[seed], **train))
    name, cfg, _ = spec.algorithms[0]
    rows, gens, _, _ = run_one(spec, name, cfg, seed, f"{name}-s{seed}")
    return rows, gens


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rebel_raises_mean_reward_on_3_of_3_seeds(seed):
    rows, _ = run({"name": "rebel"}, seed, iterations=REBEL_ITERS)
    start, end = rows[0]["eval/scores"], rows[-1]["eval/scores"]
    assert end - start >= REBEL_MARGIN, (start, end)
    assert rows[-1]["samples"] == REBEL_ITERS * 2 * 32


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", [{"name": "ppo"}, {"name": "rloo", "k": 2}, {"name": "dpo", "mode": "online"}],
                         ids=["ppo", "rloo", "online_dpo"])
def test_ppo_rloo_and_online_dpo_also_improve(algorithm):
    rows, _ = run(algorithm, 0, iterations=10, lr=3e-3)
    start, end = rows[0]["eval/scores"], rows[-1]["eval/scores"]
    assert end - start >= 0.10, (start, end)


def test_offline_dpo_prefers_the_chosen_responses(tmp_path):
    from testbed.llm.toy import toy_prompts
    prompts = toy_prompts(32, seed=3)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": "good good", "rejected": "bad dog"}) + "\n" for p in prompts))
    spec = parse_lm_spec(toy_spec({"name": "dpo", "mode": "offline", "dataset": str(path), "beta": 0.5}, iterations=8,
                                  batch=16, minibatch=8))
    name, cfg, _ = spec.algorithms[0]
    rows, _, model, tok = run_one(spec, name, cfg, 0, "dpo")
    losses = [r["loss"] for r in rows[1:]]
    assert losses[-1] < 0.5 * np.log(2) and losses[0] > losses[-1]  # ln 2 at pi = pi_ref
    assert rows[1]["samples"] == 0  # no responses drawn offline


def test_sft_fits_demonstrations(tmp_path):
    from testbed.llm.toy import toy_prompts
    path = tmp_path / "demo.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "completion": "good sun"}) + "\n" for p in toy_prompts(32, seed=4)))
    spec = parse_lm_spec(toy_spec({"name": "sft", "dataset": str(path)}, iterations=10, batch=16, minibatch=8))
    name, cfg, _ = spec.algorithms[0]
    rows, _, _, _ = run_one(spec, name, cfg, 0, "sft")
    assert rows[1]["loss"] > 2.0 and rows[-1]["loss"] < 0.5  # token NLL: ~ln 15 at random init


def test_bradley_terry_reward_model_learns_the_preference():
    from testbed.llm.data import encode_responses
    from testbed.llm.policy import LMPolicy
    from testbed.llm.rewards import RewardModel, train_bradley_terry
    from testbed.llm.toy import tiny_causal_lm, tiny_reward_model, toy_prompts, toy_tokenizer
    tok = toy_tokenizer()
    rng = np.random.default_rng(0)
    words = ["red", "blue", "cat", "dog", "sun"]
    n = 96
    good = [" ".join(["good"] + list(rng.choice(words, 2))) for _ in range(n)]
    bad = [" ".join(rng.choice(words, 3)) for _ in range(n)]
    q, qm = LMPolicy(tiny_causal_lm(), tok).encode(toy_prompts(n, seed=5))
    rm = RewardModel(tiny_reward_model(seed=2), tok.pad_token_id, tok.eos_token_id)
    c, r = encode_responses(tok, good, 5), encode_responses(tok, bad, 5)
    torch.manual_seed(0)
    losses = train_bradley_terry(rm, q[:64], qm[:64], c[:64], r[:64], epochs=15, lr=3e-3)
    assert losses[-1] < 0.3 < losses[0]
    with torch.no_grad():
        acc = float((rm.score(q[64:], qm[64:], c[64:]) > rm.score(q[64:], qm[64:], r[64:])).float().mean())
    assert acc >= 0.9  # held-out pairs


def one_rebel_update(algorithm: dict, **train):
    """One REBEL update from a fixed seed on a fixed batch of 16 prompts: (parameters after, the Step)."""
    from testbed.llm.train import build

    spec = parse_lm_spec(toy_spec({"name": "rebel", **algorithm}, batch=16, minibatch=16, **train))
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    before = [p.detach().clone() for p in ctx.policy.model.parameters()]
    torch.manual_seed(5)
    q, qm = ctx.policy.encode(["good cat", "red dog sun", "one", "blue moon up down"] * 4)
    step = alg.lm_update(q, qm)
    after = [p.detach().clone() for p in ctx.policy.model.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(after, before)) > 1e-4  # the step moved the policy
    return after, step


def test_single_step_rebel_equals_the_two_pass_update(monkeypatch):
    """One epoch in one minibatch: REBEL takes ln pi_t from the step's own forward instead of a separate no-grad
    pass; the update (same samples, same seed) must be the one the two-pass path makes."""
    from testbed.llm.backend import LMBackend

    def one_update(single: bool):
        monkeypatch.setattr(LMBackend, "single_step", lambda self, config, n, epochs: single)
        return one_rebel_update({"epochs": 1}, lr=1e-2)

    p1, s1 = one_update(True)
    p2, s2 = one_update(False)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s1.extras["objective/kl"], s2.extras["objective/kl"], atol=1e-5, rtol=1e-5)
    assert s1.loss == pytest.approx(s2.loss, rel=1e-5)


@pytest.mark.parametrize("epochs", [1, 2])
def test_rebel_micro_batches_give_the_update_of_the_whole_minibatch(epochs):
    """An algorithm's own ``grad_accum`` splits each minibatch into micro-batches (fewer sequences per backward,
    less activation memory) and must make the same optimiser steps: the gradient of the mean over the minibatch.
    epochs = 1 is the single-step path (ln pi_t from the micro-batches' own forwards), 2 the two-pass one."""

    def one_update(grad_accum: int):
        # adam_eps >> |gradient|: the AdamW step is lr·g/eps, linear in the gradient, so a wrongly scaled
        # accumulated gradient shows (with a small eps Adam would normalise the scale away); no clipping
        return one_rebel_update({"epochs": epochs, "grad_accum": grad_accum}, lr=10.0, adam_eps=1e3, max_grad_norm=0)

    p1, s1 = one_update(1)
    p4, s4 = one_update(4)  # micro-batches of 4 pairs = 8 sequences per backward instead of 32
    for a, b in zip(p1, p4):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s1.extras["objective/kl"], s4.extras["objective/kl"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("algorithm, steps", [({"name": "rebel", "epochs": 2, "minibatch": 4}, 2 * 16 // 4),
                                              ({"name": "rloo", "k": 2, "minibatch": 8}, 32 // 8),
                                              ({"name": "rebel", "epochs": 1, "minibatch": 8, "grad_accum": 2}, 16 // 8)])
def test_an_algorithms_own_minibatch_sets_its_optimiser_steps(algorithm, steps):
    """Per-algorithm minibatch / grad_accum override train's: optimiser steps per iteration = epochs × items / minibatch
    (batch 16 prompts, train.minibatch 16: REBEL items are pairs, RLOO's k·16 responses), and forward-backward passes
    = steps × grad_accum, each on minibatch / grad_accum items."""
    from testbed.llm.train import build

    spec = parse_lm_spec(toy_spec(algorithm, batch=16, minibatch=16))
    name, cfg, _ = spec.algorithms[0]
    ctx, alg = build(spec, name, cfg, 0)
    calls, sizes = [], []
    step = ctx.optimizer.optimizer.step

    def counting_step(*a, **k):
        calls.append(1)
        return step(*a, **k)

    ctx.optimizer.optimizer.step = counting_step
    orig = ctx.policy.logprobs

    def sized(q, qm, y, model=None):
        if torch.is_grad_enabled():
            sizes.append(len(y))
        return orig(q, qm, y, model)

    ctx.policy.logprobs = sized
    q, qm = ctx.policy.encode(["good cat", "red dog sun", "one", "blue moon up down"] * 4)
    alg.lm_update(q, qm)
    G = algorithm.get("grad_accum", 1)
    per_item = 2 if name == "rebel" else 1
    assert len(calls) == steps
    assert sizes == [algorithm["minibatch"] * per_item // G] * (steps * G)


def test_an_algorithms_grad_accum_must_divide_the_minibatch():
    with pytest.raises(InputError, match=r"algorithms\[0\] \(rebel\)\.grad_accum"):
        parse_lm_spec(toy_spec({"name": "rebel", "grad_accum": 3}, batch=16, minibatch=16))
    with pytest.raises(InputError, match="non-negative integer"):
        parse_lm_spec(toy_spec({"name": "ppo", "grad_accum": -1}, batch=16, minibatch=16))
    with pytest.raises(InputError, match=r"minibatches of 5 \(algorithms\[0\] \(rebel\)\.minibatch\)"):
        parse_lm_spec(toy_spec({"name": "rebel", "minibatch": 5}, batch=16, minibatch=16))
