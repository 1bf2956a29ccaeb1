"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908): DPO's update on a diffusion policy with each
image's ELBO in place of its log-likelihood — ``loss: diffusion`` of :class:`~testbed.algorithms.dpo.DPO`.

Per iteration: two trajectories of every prompt from pi_t (one sampler call), ranked by the reward of their
final images (ties carry no preference, weight 0); then ``epochs`` passes of minibatch AdamW on
:func:`testbed.losses.diffusion_dpo_loss`, each minibatch noising the preferred and the dispreferred image of a
pair to one sampled timestep t ~ U{0..T-1} with one sampled eps (the same for both, as the authors' code) and
reading the policy's and the reference's denoising errors there (the back-end's ``denoising_errors``). The
trajectories themselves are not used: only their final images — Diffusion-DPO is an offline-style objective on
image pairs, here fed online pairs.
"""

from __future__ import annotations

import torch

from testbed.algorithms.base import Step
from testbed.losses import diffusion_dpo_loss


def diffusion_dpo_update(algo, q, qm) -> Step:
    cfg, ctx = algo.config, algo.ctx
    B = len(q)
    q2, qm2 = torch.cat([q, q]), torch.cat([qm, qm])
    y = ctx.sample(q2, qm2)
    score = ctx.score(q2, y)
    x = ctx.images(y)
    first = (score[:B] >= score[B:])[:, None, None, None]
    xw, xl = torch.where(first, x[:B], x[B:]), torch.where(first, x[B:], x[:B])
    weight = (score[:B] != score[B:]).to(x.dtype)
    margins = []

    def loss_fn(i):
        ew, el, rw, rl = ctx.denoising_errors(q[i], xw[i], xl[i])
        if sum(len(h) for h, _ in margins) < B:  # the first epoch's pass over the pairs: each pair once, at theta_t
            margins.append(((rw - ew).detach(), (rl - el).detach()))  # the implicit log-ratios (per unit beta·T)
        share = ctx.minibatch_share(weight, i)  # the minibatch's tie-weighted mean, as the LM DPO update's
        if float(weight[i].sum()) == 0:
            return (ew + el).sum() * 0.0
        return diffusion_dpo_loss(ew, el, rw, rl, cfg.beta, ctx.train_timesteps, weight[i]) * share

    loss = ctx.optimise(cfg, B, cfg.epochs, loss_fn)
    hw, hl = (torch.cat(a) for a in zip(*margins))
    bt = cfg.beta * ctx.train_timesteps
    stats = {"objective/scores": score.double(), "rewards/margins": bt * (hw - hl),
             "rewards/accuracies": (hw > hl).float()}
    return Step(None, loss, 2 * B, 2 * B, stats)
