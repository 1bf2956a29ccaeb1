"""Gradient checkpointing as a spec option (``model.gradient_checkpointing: true``): the loss and gradients equal
the run without it, the activations held for the backward pass shrink (measured on CPU: the bytes autograd saves
during the forward pass), and an LM run gives the same rows."""

import csv

import pytest
import yaml

pytest.importorskip("transformers")

import torch  # noqa: E402
from llm_helpers import toy_spec  # noqa: E402

from testbed.cli import main  # noqa: E402
from testbed.llm.checkpointing import enable_gradient_checkpointing  # noqa: E402
from testbed.llm.policy import token_logprobs  # noqa: E402
from testbed.llm.toy import tiny_causal_lm  # noqa: E402

LAYERS = 6


def _forward_backward(model, ids):
    """(bytes saved for backward during the forward pass, loss, gradients)."""
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, :-1]  # as forward_logits
        loss = -token_logprobs(logits, ids[:, 1:], 1.0).mean()
    loss.backward()
    return saved[0], float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpointing_keeps_the_gradients_and_holds_fewer_activations():
    ids = torch.randint(3, 15, (4, 96), generator=torch.Generator().manual_seed(0))
    plain = tiny_causal_lm("gpt2", seed=0, layers=LAYERS, hidden=64, heads=2, positions=128).double()
    ckpt = tiny_causal_lm("gpt2", seed=0, layers=LAYERS, hidden=64, heads=2, positions=128).double()
    assert enable_gradient_checkpointing(ckpt) == LAYERS
    b_plain, l_plain, g_plain = _forward_backward(plain, ids)
    b_ckpt, l_ckpt, g_ckpt = _forward_backward(ckpt, ids)
    assert l_ckpt == pytest.approx(l_plain, rel=1e-12)
    worst = max(float((g_ckpt[n] - g_plain[n]).abs().max()) for n in g_plain)
    assert worst < 1e-12
    # each checkpointed layer keeps only its input: most of the forward's saved activations are gone
    assert b_ckpt < 0.35 * b_plain, (b_ckpt, b_plain)
    with torch.no_grad():  # generation and scoring (no autograd): the layers are not checkpointed, nothing changes
        assert torch.equal(plain(input_ids=ids).logits, ckpt(input_ids=ids).logits)


def test_an_lm_run_with_checkpointing_gives_the_same_rows(tmp_path):
    rows = {}
    for flag in (False, True):
        raw = toy_spec({"name": "rebel"}, iterations=2, batch=16, minibatch=8)
        raw["model"]["gradient_checkpointing"] = flag
        (tmp_path / f"{flag}.yaml").write_text(yaml.safe_dump(raw))
        assert main(["llm", "run", str(tmp_path / f"{flag}.yaml"), "--out", str(tmp_path / str(flag)), "--quiet"]) == 0
        with open(tmp_path / str(flag) / "metrics.csv") as f:
            rows[flag] = [{k: r[k] for k in ("iteration", "samples", "reward", "kl_ref")} | {"loss": r["loss"]}
                          for r in csv.DictReader(f)]
    for a, b in zip(rows[False], rows[True], strict=True):
        assert a["reward"] == b["reward"] and a["samples"] == b["samples"]
        if a["loss"]:
            assert b["loss"] == a["loss"]


def test_a_bad_gradient_checkpointing_value_is_one_line(tmp_path, capsys):
    raw = toy_spec({"name": "rebel"})
    raw["model"]["gradient_checkpointing"] = "yes"
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert main(["llm", "run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.gradient_checkpointing must be true or false" in err[0]
    assert not (tmp_path / "o").exists()
