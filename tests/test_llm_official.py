"""Issue 14 (items 9-15): where the LM track follows or differs from the official REBEL TL;DR code."""

from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402

from testbed.llm.models import lora_parameters  # noqa: E402
from testbed.llm.policy import token_logprobs  # noqa: E402
from testbed.llm.rewards import FunctionReward, count_token_reward, score_responses  # noqa: E402
from testbed.llm.spec import load_lm_spec  # noqa: E402

PAD, EOS, GOOD = 0, 1, 3
ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "experiments" / "llm").glob("tldr_pythia_*.yaml"))


def test_official_missing_eos_test_penalises_a_response_whose_eos_is_its_last_token():
    fn = FunctionReward(count_token_reward(GOOD, 4), PAD, EOS)
    q, qm = torch.tensor([[5], [5], [5]]), torch.ones(3, 1, dtype=torch.long)
    resp = torch.tensor([[GOOD, GOOD, GOOD, EOS],   # EOS last: no pad follows it
                         [GOOD, EOS, PAD, PAD],     # EOS then padding
                         [GOOD, GOOD, GOOD, GOOD]])  # no EOS
    _, ours = score_responses(fn, q, qm, resp, EOS, 1.0, "replace", "eos", PAD)
    _, official = score_responses(fn, q, qm, resp, EOS, 1.0, "replace", "pad", PAD)
    assert ours.tolist() == pytest.approx([0.75, 0.25, -1.0])
    assert official.tolist() == pytest.approx([-1.0, 0.25, -1.0])


def test_float64_logits_keep_their_dtype():
    lg = torch.randn(2, 3, 5, dtype=torch.float64)
    y = torch.tensor([[1, 2, 3], [0, 4, 1]])
    lp = token_logprobs(lg, y, 0.7)
    assert lp.dtype == torch.float64
    want = torch.log_softmax(lg / 0.7, -1).gather(2, y[..., None])[..., 0]
    assert torch.allclose(lp, want, atol=1e-13, rtol=0)


@pytest.mark.parametrize("spec", PAPER, ids=lambda p: p.stem)
def test_paper_specs_use_the_official_settings_and_the_dry_run_prints_them(spec, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = load_lm_spec(spec)
    assert (s.train.weight_decay, s.train.max_grad_norm, s.train.missing_eos_test) == (0.01, 0.0, "pad")
    assert s.lora["target_modules"] == ["query_key_value"]
    from testbed.cli import main
    assert main(["llm", "run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "weight_decay 0.01" in out and "max_grad_norm 0 (clipping off)" in out
    assert "test pad" in out and "target_modules ['query_key_value']" in out


def test_lora_on_query_key_value_is_a_quarter_of_all_linear_for_pythia_1_4b():
    entry = {"name": "EleutherAI/pythia-1.4b-deduped"}
    qkv, every = lora_parameters(entry, 1024, ["query_key_value"]), lora_parameters(entry, 1024)
    assert qkv == 24 * 1024 * (2048 + 3 * 2048)  # ~201M
    assert every > 4 * qkv - 1  # ~805M


def _toy_ctx(**train):
    from llm_helpers import toy_spec

    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.train import build
    spec = parse_lm_spec(toy_spec({"name": "rebel", "epochs": 1}, **train))
    return build(spec, "rebel", spec.algorithms[0][1], 0)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_weight_decay_reaches_the_optimiser(wd):
    ctx, _ = _toy_ctx(weight_decay=wd)
    assert [g["weight_decay"] for g in ctx.optimizer.param_groups] == [wd]


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_gradient_norm_is_unchanged_with_clipping_off(clip):
    ctx, algo = _toy_ctx(max_grad_norm=clip, lr=1e-9, minibatch=32)
    pol = ctx.policy
    q, qm = pol.encode(["good cat", "red blue dog"])
    y = torch.tensor([[GOOD, GOOD, EOS, PAD, PAD, PAD], [5, 6, 7, 8, 9, 10]])

    def loss_fn(i):
        return -100.0 * pol.seq_logprob(q, qm, y).sum()

    loss_fn(None).backward()
    want = float(torch.sqrt(sum((p.grad ** 2).sum() for p in ctx.params)))
    ctx.optimizer.zero_grad()
    seen, step = [], ctx.optimizer.step
    ctx.optimizer.step = lambda *a, **k: (seen.append(float(torch.sqrt(sum((p.grad ** 2).sum() for p in ctx.params)))),
                                          step(*a, **k))[1]
    ctx.optimise(algo.config, 1, 1, loss_fn)
    assert want > 10
    assert seen[0] == pytest.approx(want if clip == 0 else 1.0, rel=1e-4)


@pytest.mark.parametrize("temp", [0.0, 1.0])
def test_dpo_loss_at_logprob_temperature_equals_a_hand_computation(temp):
    import torch.nn.functional as F
    from llm_helpers import toy_spec

    from testbed.llm.spec import parse_lm_spec
    from testbed.llm.train import build
    spec = parse_lm_spec(toy_spec({"name": "dpo", "mode": "online", "beta": 0.1, "logprob_temperature": temp},
                                  temperature=0.7))
    ctx, algo = build(spec, "dpo", spec.algorithms[0][1], 0)
    pol = ctx.policy
    q, qm = pol.encode(["good cat", "red blue dog"])
    yc = torch.tensor([[GOOD, EOS, PAD, PAD, PAD, PAD], [5, 6, 7, 8, 9, 10]])
    yr = torch.tensor([[6, 6, EOS, PAD, PAD, PAD], [GOOD, EOS, PAD, PAD, PAD, PAD]])
    ref_c, ref_r = torch.tensor([-3.0, -9.0]), torch.tensor([-4.0, -2.0])
    T = temp or 0.7

    def seq(b, y):
        ids = torch.cat([q[b][qm[b].bool()], y[b]])[None]
        lg = pol.model(input_ids=ids).logits[0].double() / T
        lg[:, PAD] = float("-inf")
        Q, n = int(qm[b].sum()), int((y[b] != PAD).sum())
        return sum(torch.log_softmax(lg[Q - 1 + j], -1)[y[b, j]] for j in range(n))

    want = torch.stack([-F.logsigmoid(0.1 * ((seq(b, yc) - ref_c[b]) - (seq(b, yr) - ref_r[b]))) for b in range(2)]).mean()
    with torch.no_grad():
        got = algo.batch_loss(q, qm, yc, yr, ref_c, ref_r)
    assert float(got) == pytest.approx(float(want), abs=1e-5)
    assert pol.temperature == 0.7
