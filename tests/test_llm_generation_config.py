"""Sampling ignores a model folder's generation_config.json: what ``generate`` samples is the distribution
``LMPolicy.logprobs`` scores (DESIGN §3), whatever repetition_penalty / top_k / bad_words_ids the folder carries."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from testbed.llm.models import load_causal_lm  # noqa: E402
from testbed.llm.policy import LMPolicy, apply_lora  # noqa: E402
from testbed.llm.toy import toy_tokenizer  # noqa: E402


@pytest.mark.parametrize("lora", [False, True])
def test_samples_follow_the_scored_distribution_not_the_saved_generation_config(tmp_path, lora):
    from transformers import AutoModelForCausalLM, GenerationConfig, GPT2Config

    tok = toy_tokenizer()
    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=len(tok), pad_token_id=0,
                     eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(cfg).eval()
    good = tok.convert_tokens_to_ids("good")
    m.generation_config = GenerationConfig(do_sample=True, repetition_penalty=3.0, top_k=2, bad_words_ids=[[good]],
                                           pad_token_id=0, eos_token_id=1, bos_token_id=2)
    m.save_pretrained(tmp_path)
    m = load_causal_lm({"path": str(tmp_path)})
    assert m.generation_config.repetition_penalty == 3.0
    if lora:  # peft's generate uses its base model's generation_config
        m = apply_lora(m, r=2)
    pol = LMPolicy(m, tok, temperature=1.0, max_new_tokens=1, ref=None)
    N = 4000
    q, qm = pol.encode(["good good cat"] * N)
    torch.manual_seed(1)
    y = pol.generate(q, qm)[:, 0]
    V = len(tok)
    cand = torch.arange(V)[:, None]
    with torch.no_grad():
        p = pol.seq_logprob(q[:1].expand(V, -1), qm[:1].expand(V, -1), cand).exp()
    emp = torch.bincount(y, minlength=V).double() / N
    assert p[good] > 0.05 and emp[good] > 0  # the saved bad_words_ids and top_k=2 are not applied
    assert m.generation_config.repetition_penalty == 3.0  # the model's own config is left as it was
    assert ((emp - p.double()).abs() <= 5 * (p * (1 - p) / N).sqrt() + 1e-3).all(), (emp, p)
