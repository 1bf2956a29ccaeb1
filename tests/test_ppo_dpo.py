"""PPO and DPO/IPO against THEORY.md D, and the four-way budget test on the default problem."""

import numpy as np
import pytest
import torch
from conftest import make_algo
from scipy.special import expit, log_softmax

import testbed.algorithms.dpo as dpo_module
from testbed.datasets import PreferenceDataset, PreferenceOracle
from testbed.losses import dpo_loss, ipo_loss, ppo_clip_loss, value_loss
from testbed.policies import LogLinear, MLPPolicy, TabularSoftmax, initial_policy, mlp_features
from testbed.problems import TabularBandit, make_linear, make_tabular


# ----- losses: closed forms ------------------------------------------------------------------------
def test_loss_closed_forms():
    lr = torch.tensor([0.0, np.log(1.5), np.log(0.5)], dtype=torch.float64)
    adv = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    # min(rho·A, clip(rho)·A): 1·1 ; min(1.5, 1.2) = 1.2 ; min(0.5·-2, 0.8·-2) = -1.6
    assert ppo_clip_loss(lr, adv, 0.2).item() == pytest.approx(-(1 + 1.2 - 1.6) / 3)
    v, v_old, R = (torch.tensor(a, dtype=torch.float64) for a in ([1.0, 0.0], [0.0, 0.0], [2.0, 1.0]))
    assert value_loss(v, v_old, R).item() == pytest.approx(0.5 * (1 + 1) / 2)
    # clipped: V moves at most 0.5 from V_old: max((1-2)², (0.5-2)²) = 2.25 ; max(1, 1) = 1
    assert value_loss(v, v_old, R, 0.5).item() == pytest.approx(0.5 * (2.25 + 1) / 2)
    hw, hl = torch.tensor([0.3], dtype=torch.float64), torch.tensor([-0.2], dtype=torch.float64)
    assert dpo_loss(hw, hl, 2.0).item() == pytest.approx(-np.log(expit(2.0 * 0.5)))
    assert ipo_loss(hw, hl, 0.5).item() == pytest.approx((0.5 - 1.0) ** 2)
    with pytest.raises(ValueError, match="clip_eps"):
        ppo_clip_loss(lr, adv, 1.0)


# ----- PPO ------------------------------------------------------------------------------------------
def test_ppo_ratio_can_exceed_the_clip_range_and_clipped_samples_have_zero_gradient():
    """After 4 epochs the realised ratio exceeds 1 + eps (Wang et al. 2019), and every sample past the
    clip in the direction of its advantage contributes exactly zero gradient (THEORY.md D)."""
    p = make_tabular("random", contexts=3, actions=6, seed=0)
    pol = TabularSoftmax(np.zeros((3, 6)))
    algo = make_algo("ppo", p, batch=64, epochs=4, minibatch=8, lr=0.05, clip_eps=0.2)
    rng = np.random.default_rng(0)
    batch = algo.collect(pol, rng)
    step = algo.optimise(pol, batch, rng)
    assert step.extras["policy/ratio_max"] > 1.2
    theta = torch.tensor(step.policy.params, requires_grad=True)
    logratio = pol.torch_log_prob(theta, batch["x"], batch["y"]) - batch["lp_old"]
    ratio = logratio.detach().exp()
    clipped = ((ratio > 1.2) & (batch["adv"] > 0)) | ((ratio < 0.8) & (batch["adv"] < 0))
    assert clipped.sum() > 0 and (~clipped).sum() > 0
    idx = torch.nonzero(clipped)[:, 0]
    ppo_clip_loss(logratio[idx], batch["adv"][idx], 0.2).backward()
    assert torch.all(theta.grad == 0)
    # the unclipped ones do have a gradient
    theta.grad = None
    rest = torch.nonzero(~clipped)[:, 0]
    logratio = pol.torch_log_prob(theta, batch["x"], batch["y"]) - batch["lp_old"]
    ppo_clip_loss(logratio[rest], batch["adv"][rest], 0.2).backward()
    assert theta.grad.abs().max() > 1e-6
    # logged extras are what they say, recomputed in numpy from the returned logits: the share of ratios outside
    # [0.8, 1.2] (a count, here neither 0 nor all) and the k3 estimator mean((rho - 1) - ln rho)
    lp_new = log_softmax(step.policy.params, axis=1)[batch["x"], batch["y"]]
    rho = np.exp(lp_new - batch["lp_old"].numpy())
    outside = int(np.sum(np.abs(rho - 1) > 0.2))
    assert 0 < outside < len(rho)
    assert step.extras["policy/clipfrac"] == outside / len(rho)
    assert step.extras["policy/approx_kl"] == pytest.approx(np.mean(rho - 1 - np.log(rho)), rel=1e-12)
    assert step.extras["policy/ratio_max"] == pytest.approx(rho.max(), rel=1e-12)


def sgd_for_adam(monkeypatch):
    """torch.optim.Adam replaced by plain SGD (same learning rates): one step is then theta - lr·grad, comparable
    with a gradient written out by hand."""
    monkeypatch.setattr(torch.optim, "Adam", lambda groups, lr=1.0: torch.optim.SGD(groups, lr=lr))


def _normalised(logits):
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def test_ppo_policy_and_critic_step_equal_the_hand_gradient(monkeypatch):
    """One PPO step (one epoch, one minibatch, SGD in place of Adam) with KL shaping, per-batch advantage
    standardisation, an entropy bonus, ratios off 1 (some clipped) and value clipping (some values clipped): the
    new logits and critic weights equal theta - lr·g written out here in numpy (to 1e-12)."""
    sgd_for_adam(monkeypatch)
    p = make_tabular("random", contexts=3, actions=4, seed=2)
    pol = TabularSoftmax(np.random.default_rng(0).normal(size=(3, 4)))
    c_ent, beta, vclip, vf, eps, lr, clr = 0.5, 0.2, 0.05, 0.7, 0.2, 0.1, 0.3
    algo = make_algo("ppo", p, batch=40, minibatch=40, epochs=1, lr=lr, critic_lr=clr, ent_coef=c_ent, beta=beta,
                     value_clip=vclip, vf_coef=vf, clip_eps=eps)
    w0, w1 = np.r_[0.3, -0.2, 0.1, 0.05], np.r_[0.32, -0.4, 0.3, 0.05]  # V moves 0.02 (inside the clip) or 0.2
    algo.w = torch.tensor(w0)
    rng = np.random.default_rng(1)
    b = algo.collect(pol, rng)
    x, y = b["x"], b["y"]
    N = len(x)
    lpi = log_softmax(pol.params, axis=1)
    pi = np.exp(lpi)
    r = p.rewards[x, y] - beta * (lpi[x, y] - p.log_pi_ref[x, y])
    v_old = w0[:3][x] + w0[3]
    A = r - v_old
    A = (A - A.mean()) / (A.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(b["r"].numpy(), r, rtol=0, atol=1e-14)
    np.testing.assert_allclose(b["adv"].numpy(), A, rtol=0, atol=1e-12)
    # ratios off 1: pretend the batch came from other logits; the critic has moved since (w1)
    b["lp_old"] = b["lp_old"] + torch.as_tensor(np.random.default_rng(3).normal(scale=0.3, size=N))
    algo.w = torch.tensor(w1)
    step = algo.optimise(pol, b, rng)

    rho = np.exp(lpi[x, y] - b["lp_old"].numpy())
    clipped = np.clip(rho, 1 - eps, 1 + eps) * A < rho * A  # the clipped term is the min: no gradient
    assert 0 < clipped.sum() < N
    g = np.zeros((3, 4))
    for xi, yi, ai, ri, ci in zip(x, y, A, rho, clipped):
        e = -pi[xi].copy()
        e[yi] += 1
        g[xi] -= 0 if ci else ai * ri * e / N
        # entropy bonus: + c·mean sum_y p ln p, whose gradient in the logits is p·(ln p - sum p ln p)
        g[xi] += c_ent * pi[xi] * (lpi[xi] - np.sum(pi[xi] * lpi[xi])) / N
    np.testing.assert_allclose(_normalised(step.policy.params), _normalised(pol.params - lr * g), rtol=0, atol=1e-12)

    v = w1[:3][x] + w1[3]
    vc = v_old + np.clip(v - v_old, -vclip, vclip)
    use_clipped = (vc - r) ** 2 > (v - r) ** 2
    dv = np.where(use_clipped, (vc - r) * (np.abs(v - v_old) < vclip), v - r)  # 0.5·max(...)'s gradient in V
    assert use_clipped.sum() > 0 and np.sum(dv == 0) > 0 and np.sum(dv != 0) > 0
    gw = np.zeros(4)
    np.add.at(gw, x, vf * dv / N)
    gw[3] = vf * dv.sum() / N
    np.testing.assert_allclose(algo.w.numpy(), w1 - clr * gw, rtol=0, atol=1e-12)


@pytest.mark.parametrize("critic", ["table", "linear", "mlp"])
def test_ppo_critic_learns_the_context_value(critic):
    """With pi fixed (lr ~ 0) the critic's regression target is E[r|x] = V^pi(x); after enough batches
    V(x) is within 0.05 of it for every context (rewards in [0, 1], 2000 samples per batch)."""
    p = make_linear("random", contexts=3, actions=4, dim=3, seed=1)
    pol = LogLinear(p.features, np.zeros(3))
    algo = make_algo("ppo", p, batch=2000, epochs=4, minibatch=200, lr=1e-12, critic=critic, critic_lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(30):
        pol = algo.update(pol, rng).policy
    v_true = np.sum(pol.probs() * p.rewards, axis=1)
    v_hat = algo.value(algo.w, np.arange(3)).detach().numpy()
    np.testing.assert_allclose(v_hat, v_true, atol=0.05)


# ----- DPO / IPO --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["online", "offline"])
@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_and_ipo_step_equals_the_analytic_gradient(monkeypatch, mode, loss):
    """One DPO / IPO step on its pairs (fresh from pi_t online, the fixed dataset offline; one minibatch, SGD in
    place of Adam) equals theta - lr·g, g written out here: d/dh of -ln sigma(beta·h) is -beta·sigma(-beta·h), of
    (h - 1/(2·tau))² is 2·(h - 1/(2·tau)), and dh/dtheta = e_w - e_l in the row of x (to 1e-12)."""
    sgd_for_adam(monkeypatch)
    p = make_tabular("random", contexts=3, actions=4, seed=2)
    pol = TabularSoftmax(np.random.default_rng(0).normal(size=(3, 4)))
    beta, lr = 0.7, 0.3
    seen = []

    class Spy(PreferenceDataset):
        def __init__(self, *a):
            super().__init__(*a)
            seen.append(a)

    monkeypatch.setattr(dpo_module, "PreferenceDataset", Spy)
    algo = make_algo("dpo", p, np.random.default_rng(4), mode=mode, pairs=30, minibatch=30, lr=lr, beta=beta,
                     loss=loss)
    step = algo.update(pol, np.random.default_rng(1))
    x, yw, yl = seen[-1] if mode == "online" else (algo.data.prompt, algo.data.chosen, algo.data.rejected)
    assert len(x) == 30 and np.all(yw != yl)
    lpi, lref = log_softmax(pol.params, axis=1), p.log_pi_ref
    g = np.zeros((3, 4))
    for xi, w, lo in zip(x, yw, yl):
        h = (lpi[xi, w] - lref[xi, w]) - (lpi[xi, lo] - lref[xi, lo])
        c = -beta * expit(-beta * h) if loss == "dpo" else 2 * (h - 1 / (2 * beta))
        g[xi, w] += c / len(x)
        g[xi, lo] -= c / len(x)
    np.testing.assert_allclose(_normalised(step.policy.params), _normalised(pol.params - lr * g), rtol=0, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["gd", "adam", "newton"])
def test_population_dpo_reports_the_loss_at_the_returned_policy(optimizer):
    """Every population solver reports the full-batch loss at the policy it returns (gd reported the loss before its
    step): recomputed here in numpy from the returned logits and the pair weights, to 1e-12."""
    p = make_tabular(family="random", contexts=3, actions=4, seed=0)
    algo = make_algo("dpo", p, mode="population", optimizer=optimizer, lr=1.0, beta=0.5)
    pol = initial_policy(p, kind="tabular")
    for _ in range(2):
        step = algo.update(pol, np.random.default_rng(0))
        assert not np.allclose(step.policy.params, pol.params)
        pol = step.policy
    h = log_softmax(pol.params, axis=1) - p.log_pi_ref
    d, w = algo.data, algo.weight.numpy()
    per = np.logaddexp(0, -0.5 * (h[d.prompt, d.chosen] - h[d.prompt, d.rejected]))
    assert step.loss == pytest.approx(np.sum(w * per) / np.sum(w), rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_population_dpo_reaches_pi_star_beta(beta):
    """Bradley–Terry (temperature 1) with full coverage: the DPO optimum is pi*_beta ∝ pi_ref·exp(r/beta)."""
    rng = np.random.default_rng(2)
    p = TabularBandit(rng.random((4, 5)), rng.dirichlet(np.ones(4)), rng.dirichlet(np.ones(5) * 3, size=4))
    algo = make_algo("dpo", p, mode="population", beta=beta, labels="bt", mu="uniform")
    pol = TabularSoftmax(p.log_pi_ref)
    for _ in range(60):
        pol = algo.update(pol, None).policy
    # pi*_beta computed here, not read from the package: log_softmax(ln pi_ref + r/beta); measured 5.6e-16 in
    # probability and 2.7e-15 in log-probability (beta 0.1)
    want = log_softmax(np.log(p.pi_ref) + p.rewards / beta, axis=1)
    np.testing.assert_allclose(pol.probs(), np.exp(want), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pol.log_probs(), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_dpo_with_deterministic_preferences_drives_the_loser_to_zero(beta):
    """p*(y1 ≻ y2) = 1: no finite minimiser; pi(loser) decreases monotonically below 1e-3 for every beta
    (population loss, 100 Newton iterations for every beta)."""
    p = TabularBandit([[1.0, 0.0]])
    algo = make_algo("dpo", p, mode="population", beta=beta, labels="deterministic")
    pol = TabularSoftmax(p.log_pi_ref)
    loser, losses = [pol.probs()[0, 1]], []
    for _ in range(100):
        step = algo.update(pol, np.random.default_rng(0))
        pol = step.policy
        loser.append(pol.probs()[0, 1])
        losses.append(step.loss)
    loser, losses = np.array(loser), np.array(losses)
    k = int(np.argmax(loser < 1e-3))
    assert loser[-1] < 1e-3 and k > 0
    # strictly decreasing until below 1e-3, never increasing after (it stops only at float underflow)
    assert np.all(np.diff(loser[:k + 1]) < 0) and np.all(np.diff(loser) <= 0)
    assert np.all(np.diff(losses[:k]) < 0) and np.all(np.diff(losses) <= 0)  # falling towards inf = 0


@pytest.mark.parametrize("tau", [0.25, 1.0, 4.0])
def test_ipo_with_deterministic_preferences_stays_regularised(tau):
    """IPO's optimum on two actions with y1 always preferred: pi*(y1) = sigma(0.5/tau) (Azar et al. §5)."""
    p = TabularBandit([[1.0, 0.0]])
    algo = make_algo("dpo", p, mode="population", loss="ipo", beta=tau, labels="deterministic")
    pol = TabularSoftmax(p.log_pi_ref)
    for _ in range(20):
        pol = algo.update(pol, None).policy
    assert abs(pol.probs()[0, 0] - expit(0.5 / tau)) < 1e-12  # measured 0.0 for every tau
    np.testing.assert_allclose(pol.log_probs()[0], [-np.logaddexp(0, -0.5 / tau), -np.logaddexp(0, 0.5 / tau)],
                               rtol=0, atol=1e-10)


def test_dpo_on_a_symmetric_three_cycle_stays_at_pi_ref(tmp_path):
    """Data a ≻ b, b ≻ c, c ≻ a in equal numbers: the gradient at pi_ref cancels (THEORY.md D)."""
    PreferenceDataset(np.zeros(6, dtype=int), np.array([0, 1, 2, 0, 1, 2]), np.array([1, 2, 0, 1, 2, 0])).save(
        tmp_path / "cycle.jsonl")
    p = TabularBandit([[0.3, 0.2, 0.1]], pi_ref=[[0.5, 0.3, 0.2]])
    algo = make_algo("dpo", p, mode="population", dataset=str(tmp_path / "cycle.jsonl"), beta=0.5)
    pol = TabularSoftmax(p.log_pi_ref)
    for _ in range(20):
        pol = algo.update(pol, None).policy
    np.testing.assert_allclose(pol.probs(), p.pi_ref, rtol=0, atol=1e-8)
    # ... and it is a minimum, not a saddle: from a perturbed start the same dataset brings it back
    pol = TabularSoftmax(p.log_pi_ref + np.array([[0.3, -0.2, 0.1]]))
    for _ in range(20):
        pol = algo.update(pol, None).policy
    np.testing.assert_allclose(pol.probs(), p.pi_ref, rtol=0, atol=1e-6)


def test_offline_dataset_is_labelled_by_the_oracle_and_round_trips(tmp_path):
    """BT labels: the share of (y, y') pairs won by y matches sigma(r(y) - r(y')) (binomial 99.9% band)."""
    p = TabularBandit([[1.0, 0.0, 0.5]])
    oracle = PreferenceOracle(p, "bt", temperature=0.5)
    d = PreferenceDataset.generate(np.random.default_rng(0), p, p.pi_ref, 30000, oracle)
    assert np.all(d.chosen != d.rejected)
    pair = ((d.chosen == 0) & (d.rejected == 1)) | ((d.chosen == 1) & (d.rejected == 0))
    share = np.mean(d.chosen[pair] == 0)
    q = expit(1.0 / 0.5)
    assert abs(share - q) < 3.3 * np.sqrt(q * (1 - q) / pair.sum())
    for suffix in (".npz", ".jsonl"):
        d.save(tmp_path / f"d{suffix}")
        e = PreferenceDataset.load(tmp_path / f"d{suffix}", 1, 3)
        for k in ("prompt", "chosen", "rejected"):
            np.testing.assert_array_equal(getattr(e, k), getattr(d, k))


# ----- MLP policy -----------------------------------------------------------------------------------
def test_mlp_policy_is_uniform_at_init_and_learns_with_rebel_and_ppo():
    p = make_tabular("random", contexts=5, actions=4, seed=3)
    pol0 = initial_policy(p, "mlp", rng=np.random.default_rng(0), hidden=(16,))
    assert isinstance(pol0, MLPPolicy) and pol0.features.shape == (5, 4, 9)
    np.testing.assert_allclose(pol0.probs(), 0.25, atol=1e-15)
    gap0 = p.optimal_value() - p.value(pol0.probs())
    for name, params in (("rebel", dict(mode="sampled", solver="adam", pairs=200, lr=0.05, eta=1.0)),
                         ("ppo", dict(batch=400, lr=0.05))):
        pol, rng = pol0, np.random.default_rng(1)
        algo = make_algo(name, p, rng, **params)
        for _ in range(30):
            pol = algo.update(pol, rng).policy
        assert p.optimal_value() - p.value(pol.probs()) < gap0 / 3, name
    assert mlp_features(make_linear("random", 3, 4, 2)).shape == (3, 4, 2)


# ----- the four-way budget test -----------------------------------------------------------------------
# Budget: 100 iterations x 500 responses on the default tabular problem (20 x 10, random rewards in
# [0, 1], uniform pi_ref); J* - J(pi_0) = 0.403. Reward/preference queries: REBEL 500, NPG 500, PPO 500
# per iteration; online DPO 250 preference queries per iteration. Thresholds were set from a
# documented run (10 seeds, 2026-11-25: PPO max 0.0044, REBEL max 0.0024, NPG max 0.0022, DPO(beta =
# 0.02) max 0.034) with a margin, and are not to be loosened.
FOUR_WAY = [
    ("ppo", dict(batch=500, lr=0.05), 0.01),
    ("rebel", dict(mode="sampled", pairs=250, eta=1.0), 0.005),
    ("npg", dict(mode="sampled", samples=500, eta=1.0), 0.005),
    ("dpo", dict(mode="online", pairs=250, beta=0.02, lr=0.1), 0.05),
]


@pytest.mark.parametrize("name,params,threshold", FOUR_WAY, ids=[f[0] for f in FOUR_WAY])
def test_four_algorithms_reach_the_threshold_on_8_of_10_seeds(name, params, threshold):
    p = make_tabular()
    passed = 0
    gaps = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        pol = initial_policy(p)
        algo = make_algo(name, p, rng, **params)
        for _ in range(100):
            pol = algo.update(pol, rng).policy
        gaps.append(p.optimal_value() - p.value(pol.probs()))
        passed += gaps[-1] < threshold
    assert passed >= 8, np.round(gaps, 4)


def test_dpo_labels_from_a_given_tensor_match_the_bradley_terry_oracle(tmp_path):
    """labels: tensor with P = sigma(r(y) - r(y')) saved to a file gives the same population DPO update
    as labels: bt (temperature 1)."""
    rng = np.random.default_rng(4)
    p = TabularBandit(rng.random((3, 4)))
    P = expit(p.rewards[:, :, None] - p.rewards[:, None, :])
    np.savez(tmp_path / "P.npz", preferences=P)
    pol = TabularSoftmax(p.log_pi_ref)
    a = make_algo("dpo", p, mode="population", beta=0.5, labels="bt").update(pol, None).policy
    b = make_algo("dpo", p, mode="population", beta=0.5, labels="tensor",
                  preferences=str(tmp_path / "P.npz")).update(pol, None).policy
    np.testing.assert_allclose(b.probs(), a.probs(), atol=1e-12)
    assert np.abs(a.probs() - pol.probs()).max() > 1e-3
