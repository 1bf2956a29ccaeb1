"""The diffusion policy back-end: what the one implementation of each method (``testbed/algorithms``) calls when
its policy is a diffusion model.

:class:`DiffusionBackend` is the LM back-end (:class:`~testbed.llm.backend.LMBackend`: the AdamW solver through
``accelerate``, epochs × minibatches × micro-batches, the single-step forward saving) with a trajectory for a
response: sampling runs the stochastic sampler (from pi_t, or from pi_ref with the adapter disabled / the frozen
copy), log-probabilities are per denoising step ([B, T], the mask marks the stochastic steps), and the score is
the reward of the final image. REBEL and DPO run their LM update on it unchanged; PPO runs DDPO's update
(:meth:`testbed.algorithms.ppo.PPO.diffusion_update`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from testbed.llm.backend import LMBackend


@dataclass
class DiffusionBackend(LMBackend):
    track = "diffusion"

    def left_pad(self, q, qm):
        return q, qm

    def logprob_temperature(self, temperature: float):
        return contextlib.nullcontext()

    def response_mask(self, y):
        return self.policy.step_mask(len(y))

    def images(self, y) -> torch.Tensor:
        return self.policy.images(y)

    @torch.no_grad()
    def sample(self, q, qm, ref: bool = False):
        pol = self.policy
        if not ref:
            return pol.generate(q, qm)
        with pol._reference() as model:
            return pol.generate(q, qm, model=model)

    @torch.no_grad()
    def score(self, q, y) -> torch.Tensor:
        """The reward of each trajectory's final image for its prompt [B] (float64)."""
        pol = self.policy
        return self.score_images(pol.decode(pol.images(y)), q)

    @torch.no_grad()
    def score_images(self, images: torch.Tensor, q) -> torch.Tensor:
        """The reward of decoded images for their prompts [B] (float64)."""
        return torch.as_tensor(self.reward(images.detach().cpu(), q.cpu()), dtype=torch.float64)

    @torch.no_grad()
    def rollout_stats(self, q, qm, resp, policy_logprobs: bool = True) -> dict:
        """Per trajectory: the score of its image, ln pi_t and ln pi_ref per step [B, T], the step mask."""
        pol = self.policy
        lp = pol.logprobs(q, qm, resp)[0].detach() if policy_logprobs else None
        ref = pol.ref_logprobs(q, qm, resp) if pol.ref_kind else torch.zeros(len(resp), pol.steps, dtype=pol.dtype)
        score = self.score(q, resp)
        return {"score": score, "raw": score, "lp": lp, "ref": ref, "mask": pol.step_mask(len(resp)), "resp": resp}

    def trl_stats(self, ro: dict, beta: float) -> dict:
        """The LM back-end's objective/* statistics, per trajectory (the KL is the sample estimate
        ln pi_t - ln pi_ref of the trajectory; the evaluation's ``eval/kl`` is the exact per-step one)."""
        kl = ((ro["lp"] - ro["ref"]) * ro["mask"]).sum(1).double()
        score = ro["score"].double()
        return {"objective/scores": score, "objective/kl": kl, "objective/entropy": -(ro["lp"] * ro["mask"]).sum(1),
                "objective/non_score_reward": -beta * kl, "objective/rlhf_reward": score - beta * kl}

    @property
    def train_timesteps(self) -> int:
        """T, the noise schedule's length (Diffusion-DPO's beta·T)."""
        return int(self.policy.sampler.scheduler.config.num_train_timesteps)

    def denoising_errors(self, q, x_w, x_l):
        """Diffusion-DPO's errors of a batch of image pairs: one t ~ U{0..T-1} and one eps per pair (the same for
        both images, drawn with torch's global generator), x_t = sqrt(a_bar_t)·x_0 + sqrt(1 - a_bar_t)·eps, and
        |eps - eps_theta(x_t, t)|² (with gradients) and |eps - eps_ref(x_t, t)|² for each image, summed over the
        pixels, conditional predictions (no guidance) -> (e_w, e_l, e_w^ref, e_l^ref), each [B]."""
        pol = self.policy
        n = len(q)
        t = torch.randint(self.train_timesteps, (n,), device=x_w.device)
        eps = torch.randn_like(x_w)
        q2, t2, eps2 = torch.cat([q, q]), torch.cat([t, t]), torch.cat([eps, eps])
        xt = pol.sampler.scheduler.add_noise(torch.cat([x_w, x_l]), eps2, t2)  # as pre-training noises its images
        err = ((eps2 - pol.model(xt, t2, q2)) ** 2).flatten(1).sum(1)
        with torch.no_grad(), pol._reference() as ref:
            err_ref = ((eps2 - ref(xt, t2, q2)) ** 2).flatten(1).sum(1)
        return err[:n], err[n:], err_ref[:n], err_ref[n:]
