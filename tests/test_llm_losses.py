"""The LM losses are the bandit losses (issue 5 acceptance: loss-level identity to 1e-6).

For one-token responses a causal LM at a prompt is a tabular softmax over its vocabulary with
logits = next-token logits / temperature; the LM algorithms' minibatch losses must equal the bandit
track's loss functions on that tabular policy with the same numbers.
"""

from types import SimpleNamespace

import pytest

pytest.importorskip("transformers")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from testbed.algorithms import DPO, PPO, REBEL, DPOConfig, PPOConfig, REBELConfig, build_config  # noqa: E402
from testbed.errors import InputError  # noqa: E402
from testbed.llm.backend import LMBackend  # noqa: E402
from testbed.llm.critic import PolicyAndValue, make_critic  # noqa: E402
from testbed.llm.policy import LMPolicy, response_mask  # noqa: E402
from testbed.llm.toy import tiny_causal_lm, toy_tokenizer  # noqa: E402
from testbed.losses import dpo_loss, gae, leave_one_out_advantage, ppo_clip_loss, rebel_loss, rebel_loss_official, value_loss  # noqa: E402
from testbed.policies import TabularSoftmax  # noqa: E402

T = 0.7
PAD = 0


def backend(pol, **kw):
    """The LM back-end around a policy, without accelerator or optimiser (losses only)."""
    return LMBackend(pol, None, kw.pop("critic", None), None, None, np.random.default_rng(0), 1, 0, **kw)


@pytest.fixture(scope="module")
def setup():
    tok = toy_tokenizer()
    pol = LMPolicy(tiny_causal_lm(seed=5), tok, temperature=T, max_new_tokens=1)
    prompts = ["good cat", "red blue dog", "sun", "moon one two up"]
    q, qm = pol.encode(prompts)
    with torch.no_grad():
        logits = pol.model(input_ids=q, attention_mask=qm,
                           position_ids=(qm.cumsum(1) - 1).clamp(min=0)).logits[:, -1] / T
    # actions = every token but the pad token (never sampled): action a is token a + 1
    tab = TabularSoftmax(logits[:, 1:].double().numpy())
    theta = torch.tensor(tab.params, requires_grad=False)
    rng = np.random.default_rng(0)
    N = 16
    x = rng.integers(len(prompts), size=N)
    a1, a2 = rng.integers(tab.params.shape[1], size=N), rng.integers(tab.params.shape[1], size=N)
    return SimpleNamespace(pol=pol, q=q[x], qm=qm[x], x=x, a1=a1, a2=a2, y1=torch.as_tensor(a1 + 1)[:, None],
                           y2=torch.as_tensor(a2 + 1)[:, None], tab=tab, theta=theta, rng=rng, N=N)


def _bandit_lp(s, a):
    return s.tab.torch_log_prob(s.theta, s.x, a).float()


def test_one_token_sequence_log_prob_is_the_tabular_log_prob(setup):
    s = setup
    assert torch.allclose(s.pol.seq_logprob(s.q, s.qm, s.y1), _bandit_lp(s, s.a1), atol=1e-6)


@pytest.mark.parametrize("form,eta", [("official", 1.0), ("paper", 1.0), ("official", 3.0), ("paper", 0.5)])
def test_lm_rebel_loss_equals_the_bandit_rebel_loss(setup, form, eta):
    s = setup
    algo = REBEL(REBELConfig(eta=eta, form=form), backend(s.pol), None)
    g = torch.Generator().manual_seed(1)
    lp1, lp2 = torch.randn(s.N, generator=g) - 3, torch.randn(s.N, generator=g) - 3  # ln pi_t, any numbers
    r1, r2 = torch.rand(s.N, generator=g), torch.rand(s.N, generator=g)
    lm = algo.batch_loss(s.q, s.qm, s.y1, s.y2, lp1, lp2, r1, r2)
    f = rebel_loss_official if form == "official" else rebel_loss
    bandit = f(_bandit_lp(s, s.a1) - lp1, _bandit_lp(s, s.a2) - lp2, r1, r2, eta)
    assert abs(float(lm) - float(bandit)) < 1e-6


def test_lm_ppo_losses_equal_the_bandit_ppo_losses(setup):
    s = setup
    critic = make_critic(tiny_causal_lm(seed=5), None)
    ctx = backend(s.pol, critic=critic, prepared=PolicyAndValue(s.pol.model, critic))
    algo = PPO(PPOConfig(clip_eps=0.2, value_clip=0.2), ctx, None)
    g = torch.Generator().manual_seed(2)
    mask = response_mask(s.y1, 1)
    assert mask.tolist() == [[1]] * s.N
    lp_old = _bandit_lp(s, s.a1)[:, None] + 0.3 * torch.randn(s.N, 1, generator=g)  # ratios inside and outside the clip
    adv, v_old, ret = (torch.randn(s.N, 1, generator=g) for _ in range(3))
    pg, vf = algo.batch_loss(s.q, s.qm, s.y1, mask, lp_old, adv, v_old, ret)
    assert abs(float(pg) - float(ppo_clip_loss(_bandit_lp(s, s.a1) - lp_old[:, 0], adv[:, 0], 0.2))) < 1e-6
    with torch.no_grad():
        v = ctx.prepared(s.q, s.qm, s.y1, mask)[1][:, 0]
    assert abs(float(vf) - float(value_loss(v, v_old[:, 0], ret[:, 0], 0.2))) < 1e-6


def test_one_token_gae_is_the_bandit_advantage():
    r, v = torch.randn(5, 1), torch.randn(5, 1)
    adv, ret = gae(r, v, torch.ones(5, 1), gamma=1.0, lam=0.95)
    assert torch.allclose(adv, r - v) and torch.allclose(ret, r)


def test_gae_matches_a_direct_sum():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    gamma, lam = 0.9, 0.8
    adv, _ = gae(r, v, mask, gamma, lam)
    for b in range(3):
        n = int(mask[b].sum())
        vv = torch.cat([v[b, :n], torch.zeros(1)])
        delta = [r[b, t] + gamma * vv[t + 1] - vv[t] for t in range(n)]
        for t in range(n):
            want = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t))
            assert abs(float(adv[b, t]) - float(want)) < 1e-5
        assert float(adv[b, n:].abs().sum()) == 0


def test_lm_dpo_loss_equals_the_bandit_dpo_loss(setup):
    s = setup
    algo = DPO(DPOConfig(beta=0.1, mode="online"), backend(s.pol), None)
    g = torch.Generator().manual_seed(3)
    ref_c, ref_r = torch.randn(s.N, generator=g) - 3, torch.randn(s.N, generator=g) - 3
    lm = algo.batch_loss(s.q, s.qm, s.y1, s.y2, ref_c, ref_r)
    bandit = dpo_loss(_bandit_lp(s, s.a1) - ref_c, _bandit_lp(s, s.a2) - ref_r, 0.1)
    assert abs(float(lm) - float(bandit)) < 1e-6


@pytest.mark.parametrize("normalize", [True, False])
def test_lm_ipo_loss_is_trls_length_normalised_form_or_the_summed_one(setup, normalize):
    """IPO on responses of 1-4 tokens (an EOS ends some early): with ipo_length_normalize (the LM default) the loss is
    TRL's loss_type ipo, computed here from the per-token log-probs and masks, mean over pairs of
    ((sum lp_w - sum ref_w)/|y_w| - (sum lp_l - sum ref_l)/|y_l| - 1/(2·tau))²; without it the summed form."""
    s, tau, L, eos = setup, 0.3, 4, setup.pol.eos_id
    assert DPOConfig().ipo_length_normalize
    algo = DPO(DPOConfig(beta=tau, loss="ipo", ipo_length_normalize=normalize), backend(s.pol), None)
    g = torch.Generator().manual_seed(4)
    yc, yr = (torch.randint(2, 15, (s.N, L), generator=g) for _ in range(2))
    for y in (yc, yr):  # response lengths 1..4: an EOS at a random position, or none
        end = torch.randint(0, L + 1, (s.N,), generator=g)
        y[end < L, :] = torch.where(torch.arange(L)[None, :] == end[end < L, None], eos, y[end < L, :])
    tok_ref_c, tok_ref_r = (torch.randn(s.N, L, generator=g) - 3 for _ in range(2))
    with torch.no_grad():
        (lp_c, m_c), (lp_r, m_r) = s.pol.logprobs(s.q, s.qm, yc), s.pol.logprobs(s.q, s.qm, yr)
    assert sorted(set(m_c.sum(1).tolist()) | set(m_r.sum(1).tolist())) == [1, 2, 3, 4]
    ref_c, ref_r = (tok_ref_c * m_c).sum(1), (tok_ref_r * m_r).sum(1)
    with torch.no_grad():
        lm = float(algo.batch_loss(s.q, s.qm, yc, yr, ref_c, ref_r))
    score_c, score_r = (lp_c * m_c).sum(1) - ref_c, (lp_r * m_r).sum(1) - ref_r
    trl = float((((score_c / m_c.sum(1).clamp(min=1)) - score_r / m_r.sum(1).clamp(min=1) - 1 / (2 * tau)) ** 2).mean())
    summed = float(((score_c - score_r - 1 / (2 * tau)) ** 2).mean())
    assert abs(trl - summed) > 0.1
    assert lm == pytest.approx(trl if normalize else summed, rel=1e-6)
    # a named option of IPO only: given with loss: dpo (which never reads it) it is refused
    with pytest.raises(InputError, match=r"^dpo\.ipo_length_normalize is not read with loss: dpo"):
        build_config(DPOConfig, {"mode": "online", "ipo_length_normalize": normalize}, "dpo", "lm")
    assert build_config(DPOConfig, {"mode": "online", "loss": "ipo", "ipo_length_normalize": normalize}, "dpo",
                        "lm").ipo_length_normalize is normalize


def test_rloo_advantage_is_leave_one_out_and_one_epoch_is_reinforce(setup):
    r = torch.tensor([[1.0, 0.0, 0.5], [2.0, 2.0, 2.0]])
    assert torch.allclose(leave_one_out_advantage(r), torch.tensor([[0.75, -0.75, 0.0], [0.0, 0.0, 0.0]]))
    # at ratio 1 the clipped surrogate's gradient is REINFORCE's: -mean A·grad ln pi
    s = setup
    theta = s.theta.clone().requires_grad_(True)
    adv = torch.randn(s.N, dtype=torch.float64)
    lp = s.tab.torch_log_prob(theta, s.x, s.a1)
    (g1,) = torch.autograd.grad(ppo_clip_loss(lp - lp.detach(), adv, 0.2), theta)
    (g2,) = torch.autograd.grad(-(adv * s.tab.torch_log_prob(theta, s.x, s.a1)).mean(), theta)
    assert torch.allclose(g1, g2, atol=1e-12)
