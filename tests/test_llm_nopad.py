"""A model folder whose tokenizer has no pad token (GPT-2, Llama-3): the added ``[PAD]`` id equals the vocabulary size
and is never looked up (as the official REBEL code: a pad token added without resizing the embeddings)."""

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import yaml  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.llm.models import load_causal_lm, load_tokenizer  # noqa: E402
from testbed.llm.policy import LMPolicy, first_eos_index  # noqa: E402

WORDS = ["<eos>", "good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "one", "two", "up", "down"]


def nopad_folder(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(WORDS)}, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", bos_token="<eos>", unk_token="<eos>")
    tok.save_pretrained(path)
    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=len(WORDS), eos_token_id=0,
                     bos_token_id=0)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return path


def test_policy_samples_and_scores_with_an_out_of_vocabulary_pad(tmp_path):
    folder = nopad_folder(tmp_path / "m")
    tok, model = load_tokenizer({"path": str(folder)}), load_causal_lm({"path": str(folder)}).double()
    assert tok.pad_token_id == len(WORDS) == model.get_input_embeddings().num_embeddings
    pol = LMPolicy(model, tok, temperature=0.7, max_new_tokens=5, ref=None)
    prompts = ["good cat red", "dog", "one two"]
    q, qm = pol.encode(prompts)
    torch.manual_seed(0)
    y = pol.generate(q, qm)
    assert y.shape == (3, 5)
    ours = pol.seq_logprob(q, qm, y)
    # independent: each prompt + response alone (no padding at all), log-softmax of logits / T up to the first EOS
    for i, p in enumerate(prompts):
        ids = torch.tensor([tok(p)["input_ids"]])
        n = int(first_eos_index(y[i:i + 1], pol.eos_id)) + 1
        n = min(n, y.shape[1])
        full = torch.cat([ids, y[i:i + 1, :n]], 1)
        with torch.no_grad():
            lg = model(input_ids=full).logits[0, ids.shape[1] - 1:-1] / 0.7
        ref = torch.log_softmax(lg, -1).gather(1, y[i, :n, None]).sum()
        assert abs(float(ours[i]) - float(ref)) < 1e-10
        assert (y[i, n:] == tok.pad_token_id).all()  # after the first EOS: the pad id, however out of range


def test_a_run_with_a_pad_less_tokenizer_succeeds(tmp_path):
    folder = nopad_folder(tmp_path / "m")
    raw = {"name": "nopad", "model": {"path": str(folder)}, "prompts": {"kind": "toy", "count": 8, "seed": 0},
           "reward": {"kind": "function", "name": "count_token", "token": "good"}, "algorithms": [{"name": "rebel"}],
           "seeds": [0], "train": {"iterations": 1, "batch": 4, "minibatch": 4, "lr": 1e-3, "max_new_tokens": 4,
                                   "save": False}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 0
