"""A model folder whose tokenizer has no pad token (GPT-2, Llama-3): the added ``[PAD]`` id equals the vocabulary size
and is never looked up (as the official REBEL code: a pad token added without resizing the embeddings)."""

import csv
import json
import math

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
import yaml  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.llm.models import load_causal_lm, load_reward_model, load_tokenizer  # noqa: E402
from testbed.llm.policy import LMPolicy, first_eos_index  # noqa: E402
from testbed.llm.rewards import RewardModel  # noqa: E402
from testbed.llm.rm import load_score_model, scores  # noqa: E402

WORDS = ["<eos>", "good", "bad", "red", "blue", "cat", "dog", "sun", "moon", "one", "two", "up", "down"]


def nopad_folder(path, words=WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<eos>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", bos_token="<eos>", unk_token="<eos>")
    tok.save_pretrained(path)
    eos = words.index("<eos>")
    cfg = GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=len(words), eos_token_id=eos,
                     bos_token_id=eos)
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



P = len(WORDS)  # the pad-less tokenizer's [PAD]: the embedding's size
EOS_LAST = WORDS[1:] + WORDS[:1]  # EOS the last id, as GPT-2's 50256 (with WORDS it is 0, the id pads go in as)


def nopad_rows(eos: int):
    """Left-padded queries [5, 4] and responses [5, 4] (up to EOS, then [PAD]); the last row has no padding at all
    (a full query, a response without EOS); a query may end in id 0."""
    q = torch.tensor([[P, P, 3, 4], [P, 5, 6, 7], [8, 9, 10, 11], [P, P, P, 0], [1, 2, 3, 4]])
    r = torch.tensor([[5, eos, P, P], [eos, P, P, P], [2, 6, eos, P], [7, 8, 9, eos], [5, 6, 7, 8]])
    return q, r


def right_padded(rows: list[list[int]]) -> torch.Tensor:
    """The rows as one tensor, each followed by [PAD] to the longest."""
    T = max(map(len, rows))
    return torch.tensor([x + [P] * (T - len(x)) for x in rows])


@pytest.fixture(scope="module", params=[WORDS, EOS_LAST], ids=["eos0", "eos_last"])
def trained_rm(request, tmp_path_factory):
    """The pipeline's rm stage on a pad-less tokenizer's model, with held-out pairs and re-centring: (run folder,
    tokenizer folder, EOS id)."""
    tmp, eos = tmp_path_factory.mktemp("rm"), request.param.index("<eos>")
    folder = nopad_folder(tmp / "m", request.param)
    pairs = []
    for i in range(16):
        body = [3 + i % 5, 9 + i % 3][: 1 + i % 2]
        pairs.append({"chosen": (body + [1, 1, eos] + [P] * 6)[:6], "rejected": (body + [2, 2, eos] + [P] * 6)[:6]})
    q, r = nopad_rows(eos)
    refs = [{"query_token": a, "reference_response_token": b} for a, b in zip(q.tolist(), r.tolist())]
    (tmp / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in pairs))
    (tmp / "refs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in refs))
    stage = {"name": "rm", "kind": "reward_model", "seed": 4, "model": {"path": str(folder)},
             "train": {"lr": 1e-2, "adam_eps": 1e-5, "scheduler": "cosine", "epochs": 2, "per_device_batch": 4,
                       "grad_accum": 1, "processes": 1, "seq": 6},
             "data": {"file": "pairs.jsonl", "fields": ["chosen", "rejected"]},
             "eval_data": {"file": "pairs.jsonl", "fields": ["chosen", "rejected"]},
             "recentre": "reference_mean",
             "recentre_data": {"file": "refs.jsonl", "fields": ["query_token", "reference_response_token"]}}
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump({"name": "t", "out": str(tmp / "runs"), "stages": [stage]}))
    assert main(["llm", "pipeline", str(tmp)]) == 0
    return tmp / "runs" / "rm", folder, eos


def test_the_rm_stage_trains_with_an_out_of_vocabulary_pad(trained_rm):
    run, folder, eos = trained_rm
    tok = load_tokenizer({"path": str(folder)})
    assert (tok.pad_token_id, tok.eos_token_id) == (P, eos)
    with open(run / "metrics.csv") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f) if row["loss"]]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    summary = json.loads((run / "meta.json").read_text())["summary"]
    assert 0 <= summary["heldout_accuracy_after"] <= 1 and math.isfinite(summary["score_offset"])


@pytest.mark.parametrize("words", [WORDS, EOS_LAST], ids=["eos0", "eos_last"])
def test_rm_scores_are_the_head_at_the_last_real_token(tmp_path, words):
    """Right-padded rows, some ending in id 0 (the id pads go in as), one with no padding: each score is the head on
    the backbone's last hidden state of the row alone (no pads anywhere), plus the offset."""
    eos = words.index("<eos>")
    model = load_score_model({"path": str(nopad_folder(tmp_path / "m", words))}, P, seed=3).double()
    model.config.score_offset = 0.25
    rows = [[3, 4, 5, eos], [6, 7, 8, 9, 10, 11], [2], [0, 5, 0, 0], [0], [4, 0, eos], [3, 2, 1]]
    with torch.no_grad():
        got = scores(model, right_padded(rows), P)
        want = [float(model.score(model.transformer(input_ids=torch.tensor([x])).last_hidden_state[0, -1])[0])
                for x in rows]
    assert got.tolist() == pytest.approx([w + 0.25 for w in want], abs=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_rm_scores_with_an_in_vocabulary_pad_are_transformers_pooled_ones(arch):
    """A tokenizer with a pad (id 0, in the vocabulary): the scores and every parameter's gradient are bit for bit
    those of the classifier's own pooling at the last token that is not ``config.pad_token_id``."""
    pad = 0
    model = load_score_model({"name": f"tiny:{arch}", "hidden": 32, "layers": 2, "heads": 2, "seed": 1}, pad, seed=2)
    model.config.score_offset = -0.5
    ids = torch.tensor([[pad, pad, 3, 4, 5, 1, pad], [6, 7, 8, 9, 10, 11, 12], [pad, 5, 1, pad, pad, pad, pad]])
    mask = (ids != pad).long()
    pooled = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                   use_cache=False).logits[:, 0].float() - 0.5
    params = list(model.parameters())
    old = torch.autograd.grad(pooled.sum(), params)
    new = scores(model, ids, pad)
    assert torch.equal(new, pooled)
    assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(new.sum(), params), old))


def test_rm_scores_equal_the_lm_stages_reward_of_the_saved_model(trained_rm):
    """The trained, re-centred model loaded as ``reward: {kind: model, path}`` does (load_reward_model, RewardModel):
    its score of (left-padded query, response up to EOS) is rm.scores of the concatenated sequence."""
    run, folder, eos = trained_rm
    (ck,) = (run / "checkpoints").iterdir()
    tok, model = load_tokenizer({"path": str(folder)}), load_reward_model({"path": str(ck)})
    assert model.config.score_offset != 0
    q, r = nopad_rows(eos)
    with torch.no_grad():
        want = scores(model, torch.cat([q, r], 1), P)
    got = RewardModel(model, tok.pad_token_id, tok.eos_token_id).score(q, (q != P).long(), r)
    assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6)
