"""EOS handling and log-prob bookkeeping of the LM policy (issue 5 acceptance: EOS handling unit tests)."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from testbed.llm.policy import LMPolicy, first_eos_index, has_eos, left_pad, response_mask, truncate_after_eos  # noqa: E402
from testbed.llm.rewards import (  # noqa: E402
    FunctionReward,
    RewardModel,
    apply_missing_eos_penalty,
    count_token_reward,
    last_token_index,
    score_responses,
)
from testbed.llm.toy import tiny_causal_lm, tiny_reward_model, toy_tokenizer  # noqa: E402

PAD, EOS = 0, 1


def test_tokens_after_the_first_eos_become_padding():
    r = torch.tensor([[5, 1, 7, 1, 8], [5, 6, 7, 8, 9], [1, 4, 4, 4, 4]])
    out = truncate_after_eos(r, EOS, PAD)
    assert out.tolist() == [[5, 1, 0, 0, 0], [5, 6, 7, 8, 9], [1, 0, 0, 0, 0]]
    assert first_eos_index(r, EOS).tolist() == [1, 5, 0]


def test_log_prob_mask_includes_the_eos_token():
    r = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0]])
    assert response_mask(r, EOS).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_sequence_log_prob_is_the_sum_up_to_and_including_eos_with_temperature():
    tok = toy_tokenizer()
    pol = LMPolicy(tiny_causal_lm(seed=3), tok, temperature=0.7, max_new_tokens=4)
    q, qm = pol.encode(["good cat", "red blue dog"])
    resp = torch.tensor([[5, EOS, PAD, PAD], [6, 7, 8, 9]])
    # independent computation: one forward per sequence without padding, logits / temperature
    for b in range(2):
        ids = torch.cat([q[b][qm[b].bool()], resp[b]])[None]
        logits = pol.model(input_ids=ids).logits[0] / 0.7
        logits[:, PAD] = float("-inf")  # the pad token is never sampled
        Q = int(qm[b].sum())
        n = 2 if b == 0 else 4
        want = sum(torch.log_softmax(logits[Q - 1 + j], -1)[resp[b, j]] for j in range(n))
        got = pol.seq_logprob(q[b:b + 1], qm[b:b + 1], resp[b:b + 1])[0]
        assert abs(float(got) - float(want)) < 1e-5


def test_missing_eos_penalty_is_applied_exactly_once():
    tok = toy_tokenizer()
    good = tok.convert_tokens_to_ids("good")
    fn = FunctionReward(count_token_reward(good, 4), PAD, EOS)
    q = torch.tensor([[0, 5], [5, 6]])
    qm = torch.tensor([[0, 1], [1, 1]])
    resp = torch.tensor([[good, good, EOS, PAD], [good, good, good, 7]])  # the second has no EOS
    raw, pen = score_responses(fn, q, qm, resp, EOS, penalty=0.3, mode="subtract")
    assert raw.tolist() == pytest.approx([0.5, 0.75])
    assert pen.tolist() == pytest.approx([0.5, 0.75 - 0.3])  # once, not twice
    raw, pen = score_responses(fn, q, qm, resp, EOS, penalty=1.0, mode="replace")
    assert pen.tolist() == pytest.approx([0.5, -1.0])  # official REBEL: penalty_reward_value = -1
    assert torch.equal(apply_missing_eos_penalty(raw, has_eos(resp, EOS), None), raw)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_reward_is_read_at_the_last_non_pad_token(arch):
    tok = toy_tokenizer()
    rm = RewardModel(tiny_reward_model(arch, seed=1), PAD, EOS)
    q, qm = LMPolicy(tiny_causal_lm(arch), tok).encode(["good", "red blue dog sun"])
    resp = torch.tensor([[5, 6, EOS, PAD, PAD], [7, 8, 9, 10, 11]])
    got = rm.score(q, qm, resp)
    for b in range(2):
        seq = torch.cat([q[b][qm[b].bool()], resp[b][response_mask(resp[b:b + 1], EOS)[0].bool()]])[None]
        full = rm.scores_at_every_token(seq, torch.ones_like(seq))
        assert abs(float(got[b]) - float(full[0, -1])) < 1e-5
    assert last_token_index(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])).tolist() == [2, 3]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_left_and_right_padded_prompts_give_the_same_log_probs(arch):
    tok = toy_tokenizer()
    pol = LMPolicy(tiny_causal_lm(arch, seed=2), tok, temperature=0.7)
    prompts = ["good", "red blue dog sun", "cat moon"]
    ql, qml = pol.encode(prompts)
    tok.padding_side = "right"
    enc = tok(prompts, return_tensors="pt", padding=True)
    qr, qmr = enc["input_ids"], enc["attention_mask"]
    assert not torch.equal(qr, ql)  # really right-padded
    resp = torch.tensor([[5, 6, EOS, PAD], [7, 8, 9, 10], [EOS, PAD, PAD, PAD]])
    left = pol.seq_logprob(ql, qml, resp)
    right = pol.seq_logprob(qr, qmr, resp)
    assert torch.allclose(left, right, atol=1e-6)
    alone = torch.stack([pol.seq_logprob(ql[b:b + 1, -int(qml[b].sum()):], qml[b:b + 1, -int(qml[b].sum()):],
                                         resp[b:b + 1])[0] for b in range(3)])
    assert torch.allclose(left, alone, atol=1e-5)  # padding never shifts positions
    assert left_pad(qr, qmr, PAD)[0].tolist() == ql.tolist()


def test_generate_pads_after_eos_and_never_samples_pad():
    tok = toy_tokenizer()
    pol = LMPolicy(tiny_causal_lm(seed=0), tok, temperature=1.0, max_new_tokens=6)
    q, qm = pol.encode(["good cat", "red"] * 100)
    torch.manual_seed(0)
    y = pol.generate(q, qm)
    assert y.shape == (200, 6)
    assert torch.equal(y, truncate_after_eos(y, EOS, PAD))
    m = response_mask(y, EOS).bool()
    assert not (y[m] == PAD).any()  # pads only after EOS
    assert (y[~m] == PAD).all()
    assert 0 < has_eos(y, EOS).float().mean() < 1


def test_reference_is_the_policy_with_its_adapter_disabled():
    from testbed.llm.policy import apply_lora
    tok = toy_tokenizer()
    base = tiny_causal_lm(seed=4)
    pol = LMPolicy(apply_lora(base, r=4), tok)
    assert pol.ref_kind == "adapter" and pol.ref_model is None  # no second copy in memory
    q, qm = pol.encode(["good cat"])
    y = torch.tensor([[5, 6, EOS]])
    with torch.no_grad():
        for n, p in pol.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    assert abs(float(pol.seq_logprob(q, qm, y)) - float(pol.ref_logprobs(q, qm, y).sum())) > 1e-3
    full = LMPolicy(tiny_causal_lm(seed=4), tok)
    assert abs(float(pol.ref_logprobs(q, qm, y).sum()) - float(full.seq_logprob(q, qm, y))) < 1e-5
