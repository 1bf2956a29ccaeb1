"""Diffusion-DPO (Wallace et al. 2023, ``loss: diffusion`` of DPO on the image track): the loss equals its
closed form computed here with numpy (value and gradient), the back-end's denoising errors equal an independent
computation with diffusers' own ``add_noise`` and the UNet called directly, and the update at pi_theta = pi_ref
has the loss ln 2 (every non-tied pair's margin is 0)."""

import math

import numpy as np
import pytest
import torch

from testbed.losses import diffusion_dpo_loss


def test_diffusion_dpo_loss_is_its_closed_form():
    g = np.random.default_rng(0)
    ew, el, rw, rl = (g.uniform(0, 3, 7) for _ in range(4))
    w = np.array([1, 0, 1, 1, 2, 1, 0.5])
    beta, T = 0.3, 5
    d = (ew - rw) - (el - rl)
    per = np.logaddexp(0.0, beta * T * d)  # -ln sigma(-beta·T·d)
    t = [torch.tensor(a, requires_grad=True) for a in (ew, el, rw, rl)]
    loss = diffusion_dpo_loss(*t, beta, T)
    np.testing.assert_allclose(float(loss.detach()), per.mean(), rtol=1e-13)
    np.testing.assert_allclose(float(diffusion_dpo_loss(*t, beta, T, torch.tensor(w)).detach()), (w * per).sum() / w.sum(),
                               rtol=1e-13)
    loss.backward()
    grad_w = beta * T / (1 + np.exp(-beta * T * d)) / len(d)  # d/de_w softplus(beta·T·d) / N
    np.testing.assert_allclose(t[0].grad.numpy(), grad_w, rtol=1e-12)
    np.testing.assert_allclose(t[1].grad.numpy(), -grad_w, rtol=1e-12)
    np.testing.assert_allclose(float(diffusion_dpo_loss(t[2], t[3], t[2], t[3], beta, T)), math.log(2), rtol=1e-14)
    with pytest.raises(ValueError, match="timesteps"):
        diffusion_dpo_loss(*t, beta, 0)
    with pytest.raises(ValueError, match="beta"):
        diffusion_dpo_loss(*t, 0.0, T)


def _backend(epochs=1):
    pytest.importorskip("diffusers")
    from testbed.algorithms import build_config
    from testbed.algorithms.dpo import DPOConfig
    from testbed.diffusion.models import tiny_unet
    from testbed.diffusion.policy import DiffusionPolicy
    from testbed.diffusion.rewards import make_reward
    from testbed.diffusion.sampler import Sampler, make_scheduler
    from testbed.diffusion.spec import DiffusionTrainConfig
    from testbed.diffusion.train import make_backend

    net = tiny_unet(8, 1, 3, (8, 16), 1, seed=0, dtype=torch.float64)
    pol = DiffusionPolicy(net, Sampler(make_scheduler("ddim", 10), 2, 1.0), (1, 8, 8), 1.0, 3, "copy")
    tr = DiffusionTrainConfig(iterations=2, batch=6, minibatch=6, lr=1e-3, dtype="float64")
    cfg = build_config(DPOConfig, {"mode": "online", "loss": "diffusion", "beta": 0.5, "epochs": epochs},
                       "dpo", "diffusion")
    return make_backend(pol, make_reward({"kind": "jpeg_compressibility"}, None), tr, np.random.default_rng(0),
                        "dpo", cfg)


def test_denoising_errors_equal_an_independent_computation():
    from diffusers import DDPMScheduler

    ctx, _ = _backend()
    with torch.no_grad():  # move the policy off the reference
        for p in ctx.policy.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    g = torch.Generator().manual_seed(1)
    q = torch.tensor([0, 2, 1])
    xw, xl = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64), torch.randn(3, 1, 8, 8, generator=g,
                                                                                  dtype=torch.float64)
    torch.manual_seed(5)
    got = ctx.denoising_errors(q, xw, xl)
    torch.manual_seed(5)  # the same draws, in the documented order: t [B], then eps like x_w
    t = torch.randint(10, (3,))
    eps = torch.randn_like(xw)
    sched = DDPMScheduler(num_train_timesteps=10)
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    for k, (x, unet) in enumerate([(xw, ctx.policy.model.unet), (xl, ctx.policy.model.unet),
                                   (xw, ctx.policy.ref_model.unet), (xl, ctx.policy.ref_model.unet)]):
        want = ((eps - unet(sched.add_noise(x, eps, t), t, class_labels=q).sample) ** 2).sum((1, 2, 3))
        np.testing.assert_allclose(got[k].detach().numpy(), want.detach().numpy(), rtol=1e-10)
    assert not torch.allclose(got[0], got[2])  # the policy is off the reference: the check could fail
    assert got[0].requires_grad and not got[2].requires_grad


def test_diffusion_dpo_update_at_the_reference_has_loss_ln2():
    ctx, algo = _backend(epochs=1)
    torch.manual_seed(0)
    step = algo.diffusion_update(*ctx.policy.encode([0, 1, 2, 0, 1, 2]))
    assert step.samples == step.queries == 12
    np.testing.assert_allclose(step.loss, math.log(2), rtol=1e-12)  # one step at theta = ref: every margin 0
    np.testing.assert_allclose(step.extras["rewards/margins"].numpy(), 0.0, atol=0)


def test_diffusion_loss_is_refused_off_the_image_track():
    from testbed.algorithms import build_config
    from testbed.algorithms.dpo import DPO, DPOConfig

    cfg = build_config(DPOConfig, {"mode": "online", "loss": "diffusion"}, "dpo", "lm")
    assert "diffusion policy" in DPO.check_track(cfg, "lm")
    assert DPO.check_track(build_config(DPOConfig, {"mode": "online", "loss": "diffusion"}, "dpo", "diffusion"),
                           "diffusion") is None


def test_diffusion_dpo_ranks_each_pair_by_its_reward_and_weights_ties_out():
    """Off the reference (where a swapped winner and loser would change the loss): the image passed as preferred
    is the trajectory with the higher reward, and the loss is diffusion_dpo_loss of the errors the back-end
    returned, tie-weighted."""
    from testbed.losses import diffusion_dpo_loss

    ctx, algo = _backend(epochs=1)
    with torch.no_grad():
        for p in ctx.policy.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    seen = {}
    real_sample, real_errors = ctx.sample, ctx.denoising_errors

    def sample(q2, qm2):
        seen["y"] = real_sample(q2, qm2)
        return seen["y"]

    def errors(q, xw, xl):
        out = real_errors(q, xw, xl)
        seen.update(q=q, xw=xw, xl=xl, errors=[e.detach().clone() for e in out])
        return out

    ctx.sample, ctx.denoising_errors = sample, errors
    torch.manual_seed(0)
    q, qm = ctx.policy.encode([0, 1, 2, 0, 1, 2])
    step = algo.diffusion_update(q, qm)
    B = len(q)
    score = ctx.score(torch.cat([q, q]), seen["y"]).double()
    images = ctx.images(seen["y"])
    s1, s2 = score[:B], score[B:]
    assert bool((s1 != s2).any())  # some pairs carry a preference
    first = (s1 >= s2)[:, None, None, None]
    want_w, want_l = torch.where(first, images[:B], images[B:]), torch.where(first, images[B:], images[:B])
    assert len(seen["xw"]) == B  # one minibatch: every pair once, in the solver's shuffled order
    # match each row to its pair by either image, then require the order: preferred = the higher reward
    rows = [next(j for j in range(B) if torch.equal(seen["xw"][k], want_w[j]) or torch.equal(seen["xw"][k], want_l[j]))
            for k in range(B)]
    for k, j in enumerate(rows):
        assert torch.equal(seen["xw"][k], want_w[j]) and torch.equal(seen["xl"][k], want_l[j]), (k, float(s1[j]), float(s2[j]))
    w = torch.stack([(s1[j] != s2[j]).double() for j in rows])
    np.testing.assert_allclose(step.loss, float(diffusion_dpo_loss(*seen["errors"], 0.5, ctx.train_timesteps, w)),
                               rtol=1e-12)
    assert abs(step.loss - math.log(2)) > 1e-6  # off the reference the margins are not 0


def _minibatch_gradient(grad_accum: int, score: torch.Tensor):
    """The gradient at Diffusion-DPO's one optimiser step (4 pairs, one minibatch, ``grad_accum`` micro-batches)
    and the logged loss, with the rewards ``score`` and deterministic denoising errors (t = 5, eps = 0: no draws per
    micro-batch), the policy moved off the reference."""
    import dataclasses

    ctx, algo = _backend(epochs=1)
    ctx.train = dataclasses.replace(ctx.train, batch=4, minibatch=4, grad_accum=grad_accum, max_grad_norm=0.0)
    pol = ctx.policy
    with torch.no_grad():
        for p in pol.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=p.dtype))
    ctx.score = lambda q, y: score

    def errors(q, xw, xl):
        t = torch.full((2 * len(q),), 5)
        xt = pol.sampler.scheduler.add_noise(torch.cat([xw, xl]), torch.zeros_like(torch.cat([xw, xl])), t)
        e = (pol.model(xt, t, torch.cat([q, q])) ** 2).flatten(1).sum(1)
        with torch.no_grad():
            r = (pol.ref_model(xt, t, torch.cat([q, q])) ** 2).flatten(1).sum(1)
        n = len(q)
        return e[:n], e[n:], r[:n], r[n:]

    ctx.denoising_errors = errors
    inner = getattr(ctx.optimizer, "optimizer", ctx.optimizer)
    grads, real_step = [], inner.step

    def step(*a, **k):
        grads.append(torch.cat([p.grad.flatten().clone() for p in ctx.params]))
        return real_step(*a, **k)

    inner.step = step
    torch.manual_seed(0)
    out = algo.diffusion_update(*pol.encode([0, 1, 2, 0]))
    assert len(grads) == 1  # one optimiser step: the minibatch's
    return grads[0], out.loss


@pytest.mark.parametrize("tie", [True, False], ids=["one-tie", "no-tie"])
def test_diffusion_dpo_minibatch_gradient_does_not_depend_on_grad_accum(tie):
    """grad_accum 2 splits the 4 pairs into two micro-batches of 2; with pair 0 tied (weight 0) one of them weighs
    1 and the other 2. The minibatch gradient must be that of the tie-weighted mean over all 4 pairs, as with one
    micro-batch (each micro-batch normalised by its own weight sum was 36% off). The logged loss too."""
    score = torch.tensor([1.0 if tie else 2.0, 5, 5, 5, 1, 0, 0, 0], dtype=torch.float64)  # pair 0: 1 vs 1
    g1, l1 = _minibatch_gradient(1, score)
    g2, l2 = _minibatch_gradient(2, score)
    assert float(g1.norm()) > 0
    assert float((g2 - g1).norm() / g1.norm()) < 1e-10
    np.testing.assert_allclose(l2, l1, rtol=1e-10)
