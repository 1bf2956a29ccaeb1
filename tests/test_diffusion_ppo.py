"""PPO on the image track (DDPO's update, ``PPO.diffusion_update``) against an independent computation on a tiny
float64 UNet: the per-step log-ratio (``logprob: sum`` or DDPO's per-pixel ``mean``: the sum's / D), the clipped
surrogate at an optimiser step where the ratios are off 1, the per-prompt advantages and their clip ``adv_clip``;
the advantages the update feeds the surrogate, within the batch (``prompt_buffer`` 0, bit for bit) or from DDPO's
stat tracker across updates (``prompt_buffer`` N)."""

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from testbed.algorithms import build_config  # noqa: E402
from testbed.algorithms.ppo import PPOConfig, step_logratio  # noqa: E402
from testbed.errors import InputError  # noqa: E402
from testbed.losses import per_prompt_advantage  # noqa: E402
from tests.test_diffusion_losses import DDPOTracker  # noqa: E402

PROMPTS = [0, 0, 1, 1, 1, 2]  # prompt 2 alone: the batch's mean and std


def _backend(**ppo):
    from testbed.diffusion.models import tiny_unet
    from testbed.diffusion.policy import DiffusionPolicy
    from testbed.diffusion.rewards import make_reward
    from testbed.diffusion.sampler import Sampler, make_scheduler
    from testbed.diffusion.spec import DiffusionTrainConfig
    from testbed.diffusion.train import make_backend

    net = tiny_unet(8, 1, 3, (8, 16), 1, seed=0, dtype=torch.float64)
    pol = DiffusionPolicy(net, Sampler(make_scheduler("ddim", 10), 2, 1.0), (1, 8, 8), 1.0, 3, "copy")
    tr = DiffusionTrainConfig(iterations=2, batch=6, minibatch=3, lr=3e-3, max_grad_norm=0.0, dtype="float64")
    cfg = build_config(PPOConfig, {"beta": 0.0, "epochs": 1, **ppo}, "ppo", "diffusion")
    return make_backend(pol, make_reward({"kind": "jpeg_compressibility"}, None), tr, np.random.default_rng(0), "ppo",
                        cfg)


def test_step_logratio_mean_is_the_sums_divided_by_the_pixels():
    g = torch.Generator().manual_seed(0)
    lp, old = (torch.randn(5, 4, generator=g, dtype=torch.float64) * 300 for _ in range(2))
    assert torch.equal(step_logratio(lp, old, "sum", 768), lp - old)
    assert torch.equal(step_logratio(lp, old, "mean", 768), (lp - old) / 768)


def _advantages(r, q, clip):
    """DDPO's per-prompt standardisation (population std; a prompt alone takes the batch's), then the clip."""
    adv = np.empty(len(r))
    for c in np.unique(q):
        pool = r[q == c] if (q == c).sum() > 1 else r
        adv[q == c] = (r[q == c] - pool.mean()) / (pool.std() + 1e-8)
    return np.clip(adv, -clip, clip) if clip else adv


@pytest.mark.parametrize("logprob, adv_clip", [("sum", 0.0), ("mean", 0.0), ("mean", 1.2)])
def test_ppo_diffusion_step_is_the_clipped_surrogate_of_its_log_ratio(logprob, adv_clip):
    """Two minibatches of 3 trajectories: the second optimiser step's gradient (ratios off 1, some clipped) equals
    the gradient of -mean over (trajectory, stochastic step) of min(rho·A, clip(rho, 1 ± eps)·A) computed here, with
    ln rho = (ln pi_theta - ln pi_t) summed over the pixels (sum) or divided by D = 64 (mean)."""
    eps = 0.2 if logprob == "sum" else 0.002
    ctx, algo = _backend(clip_eps=eps, logprob=logprob, adv_clip=adv_clip)
    pol = ctx.policy
    start = {k: v.clone() for k, v in pol.model.state_dict().items()}
    inner = getattr(ctx.optimizer, "optimizer", ctx.optimizer)
    seen, real_step, real_sample = [], inner.step, ctx.sample

    def step(*a, **k):
        seen.append(({k: v.clone() for k, v in pol.model.state_dict().items()}, ctx.minibatch_index.copy(),
                     torch.cat([p.grad.flatten().clone() for p in ctx.params])))
        return real_step(*a, **k)

    def sample(q, qm, ref=False):
        seen.append(real_sample(q, qm, ref))
        return seen[-1]

    inner.step, ctx.sample = step, sample
    torch.manual_seed(0)
    q, qm = pol.encode(PROMPTS)
    out = algo.diffusion_update(q, qm)
    y = seen.pop(0)
    assert len(seen) == 2  # two optimiser steps
    (_, i1, _), (params, i2, got) = seen

    pol.model.load_state_dict(start)
    with torch.no_grad():
        lp_old, m = pol.logprobs(q, qm, y)
    m = m.bool()
    assert bool(m.all())  # DDIM, eta 1: both steps stochastic
    r = ctx.score(q, y).numpy()
    adv = torch.as_tensor(_advantages(r, np.array(PROMPTS), adv_clip))
    if adv_clip:
        assert float(adv.abs().max()) == adv_clip  # the clip acts: the check could fail
    pol.model.load_state_dict(params)
    for p in ctx.params:
        p.grad = None
    i2 = torch.as_tensor(i2)
    lp, _ = pol.logprobs(q[i2], qm[i2], y[i2])
    log_rho = (lp - lp_old[i2]) / (pol.dim if logprob == "mean" else 1)
    rho, a = log_rho.exp(), adv[i2][:, None].expand_as(lp)
    loss = -torch.minimum(rho * a, rho.clamp(1 - eps, 1 + eps) * a).mean()
    loss.backward()
    want = torch.cat([p.grad.flatten() for p in ctx.params])
    # steps whose clipped term is the minimum (no gradient) and steps that pass rho·A at rho != 1: both occur
    clipped = ((rho > 1 + eps) & (a > 0)) | ((rho < 1 - eps) & (a < 0))
    assert 0 < float(clipped.double().mean()) < 1 and float((rho[~clipped] - 1).abs().min()) > 1e-3
    assert pol.dim == 64
    assert float((got - want).norm() / want.norm()) < 1e-10
    # the other reduction gives another step: the check tells them apart
    pol.model.load_state_dict(params)
    for p in ctx.params:
        p.grad = None
    lp, _ = pol.logprobs(q[i2], qm[i2], y[i2])
    other = (lp - lp_old[i2]) / (1 if logprob == "mean" else pol.dim)
    rho_o = other.exp()
    (-torch.minimum(rho_o * a, rho_o.clamp(1 - eps, 1 + eps) * a).mean()).backward()
    assert float((got - torch.cat([p.grad.flatten() for p in ctx.params])).norm() / want.norm()) > 1e-3
    # the logged loss: the mean of the two minibatches' (the first at theta_t, every ratio 1: -mean A)
    first = -float(adv[torch.as_tensor(i1)].mean())
    np.testing.assert_allclose(out.loss, (first + float(loss)) / 2, rtol=1e-10)


def _update_advantages(ctx, algo, q, qm, monkeypatch):
    """Run one update; (the per-trajectory advantages its clipped surrogate was given [N], the scores [N])."""
    import testbed.algorithms.ppo as ppo_mod

    real_loss, real_optimise, real_sample = ppo_mod.ppo_clip_loss, ctx.optimise, ctx.sample
    seen, idx, ys = [], [], []
    monkeypatch.setattr(ppo_mod, "ppo_clip_loss", lambda lr, adv, eps: (seen.append(adv.detach().clone()),
                                                                         real_loss(lr, adv, eps))[1])
    monkeypatch.setattr(ctx, "optimise", lambda cfg, n, epochs, fn: real_optimise(
        cfg, n, epochs, lambda i: (idx.append(i.clone()), fn(i))[1]))
    monkeypatch.setattr(ctx, "sample", lambda q, qm, ref=False: (ys.append(real_sample(q, qm, ref)), ys[-1])[1])
    algo.diffusion_update(q, qm)
    monkeypatch.undo()
    adv = torch.full((len(q),), float("nan"), dtype=torch.float64)
    for i, a in zip(idx, seen):
        a = a.reshape(len(i), -1)  # every step stochastic: a trajectory's advantage on each of its steps
        assert torch.equal(a, a[:, :1].expand_as(a))
        adv[i] = a[:, 0]
    assert not bool(adv.isnan().any())  # every trajectory once (one epoch)
    return adv, ctx.score(q, ys[0])


def test_prompt_buffer_0_gives_the_within_batch_advantages_bit_for_bit(monkeypatch):
    ctx, algo = _backend(clip_eps=0.2)
    assert algo.config.prompt_buffer == 0
    torch.manual_seed(0)
    q, qm = ctx.policy.encode(PROMPTS)
    for _ in range(2):
        adv, r = _update_advantages(ctx, algo, q, qm, monkeypatch)
        assert torch.equal(adv, per_prompt_advantage(r, q.reshape(len(q), -1)))
    assert algo.prompt_stats == {}


@pytest.mark.parametrize("scale", [True, False])
def test_prompt_buffer_gives_ddpos_stat_tracker_advantages_across_updates(monkeypatch, scale):
    """prompt_buffer 3, min_count 2 over three updates of PROMPTS: prompt 2 (one sample each update) takes the batch's
    statistics until its second update, prompt 0's buffer overflows at the second; the advantages equal a copy of
    DDPO's PerPromptStatTracker's (unscaled: r - its mean), and differ from the within-batch ones."""
    ctx, algo = _backend(clip_eps=0.2, prompt_buffer=3, prompt_min_count=2, normalize_advantage=scale)
    ref = DDPOTracker(3, 2)
    torch.manual_seed(0)
    q, qm = ctx.policy.encode(PROMPTS)
    far = []
    for _ in range(3):
        adv, r = _update_advantages(ctx, algo, q, qm, monkeypatch)
        want = ref.update(PROMPTS, r.numpy())
        if not scale:  # r - the tracker's mean: undo its division by std + 1e-6
            pools = {c: np.array(ref.stats[c]) if len(ref.stats[c]) >= 2 else r.numpy() for c in set(PROMPTS)}
            want = np.array([r[i].item() - pools[c].mean() for i, c in enumerate(PROMPTS)])
        np.testing.assert_allclose(adv.numpy(), want, rtol=0, atol=1e-12)
        far.append(float((adv - per_prompt_advantage(r, q, scale=scale)).abs().max() / adv.abs().max()))
    assert far[1] > 0.1 and far[2] > 0.1  # the buffer acts (relative to the largest advantage)
    assert sorted(len(v) for v in algo.prompt_stats.values()) == [3, 3, 3]


@pytest.mark.parametrize("field, value", [("logprob", "mean"), ("adv_clip", 5.0), ("prompt_buffer", 16),
                                          ("prompt_min_count", 8)])
def test_image_only_ppo_fields_are_refused_elsewhere(field, value):
    for track in ("lm", "bandit"):
        with pytest.raises(InputError, match=f"ppo.{field} applies to diffusion runs only"):
            build_config(PPOConfig, {field: value}, "ppo", track)
    with pytest.raises(InputError, match="ppo.logprob"):
        build_config(PPOConfig, {"logprob": "median"}, "ppo", "diffusion")


@pytest.mark.parametrize("params, message", [
    ({"prompt_buffer": -1}, "ppo.prompt_buffer must be a non-negative integer (got -1)"),
    ({"prompt_buffer": 2.5}, "ppo.prompt_buffer must be a non-negative integer (got 2.5)"),
    ({"prompt_buffer": True}, "ppo.prompt_buffer must be a non-negative integer (got True)"),
    ({"prompt_buffer": 32, "prompt_min_count": 0}, "ppo.prompt_min_count must be a positive integer (got 0)"),
    ({"prompt_buffer": 32, "prompt_min_count": "16"}, "ppo.prompt_min_count must be a positive integer (got '16')"),
    ({"prompt_buffer": 8, "prompt_min_count": 16}, "ppo.prompt_min_count 16 exceeds prompt_buffer 8"),
    ({"prompt_min_count": 8}, "ppo.prompt_min_count is not read with prompt_buffer: 0"),
])
def test_bad_prompt_buffer_values_are_one_line_errors_naming_the_field(params, message):
    with pytest.raises(InputError) as e:
        build_config(PPOConfig, params, "ppo", "diffusion")
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1
