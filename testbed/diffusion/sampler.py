"""The stochastic sampler as a policy: each denoising step is a Gaussian, its log-density is the step's
log-probability, and a trajectory's log-probability is the sum over its stochastic steps (DDPO, Black et
al. 2023, https://arxiv.org/abs/2305.13301, §4.2).

A step from x_t to x_{t'} (t' the scheduler's previous timestep) with the noise prediction eps:

- DDIM with eta > 0 (Song et al. 2021, eq. 12): the mean is diffusers' own ``DDIMScheduler.step`` with zero
  variance noise, sigma = eta·sqrt(``_get_variance(t, t')``);
- DDPM (Ho et al. 2020, eqs. 6-7): the posterior mean
  sqrt(a'_bar)·beta_t/(1 - a_bar)·x0_hat + sqrt(alpha_t)·(1 - a'_bar)/(1 - a_bar)·x_t with x0_hat from eps and
  sigma² = ``DDPMScheduler._get_variance(t)`` ("fixed_small"); its last step (t' < 0) adds no noise: it is a
  deterministic function of x_1 and carries no log-probability (mask 0).

ln N(x'; mu, sigma² I) = -|x' - mu|²/(2 sigma²) - D·ln sigma - (D/2)·ln 2 pi, summed over the D pixels
(DDPO averages them instead, PPO's ``logprob: mean``; the sum is the density). Clipping of x0_hat is off, so the
mean is smooth in eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULERS = ("ddim", "ddpm")


def make_scheduler(kind: str, train_timesteps: int = 1000, beta_schedule: str = "linear",
                   beta_start: float = 1e-4, beta_end: float = 0.02):
    """A diffusers scheduler with clipping off; DDIM as Stable Diffusion's (timesteps offset by 1, the final
    alpha_bar = alpha_bar_0), so that its last step, from t = 1 to alpha_bar_0, keeps a positive variance."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=train_timesteps, beta_schedule=beta_schedule, beta_start=beta_start,
                  beta_end=beta_end, clip_sample=False)
    if kind == "ddim":
        s = DDIMScheduler(set_alpha_to_one=False, steps_offset=1, **common)
    elif kind == "ddpm":
        s = DDPMScheduler(variance_type="fixed_small", **common)
    else:
        raise ValueError(f"scheduler must be one of {SCHEDULERS} (got {kind!r})")
    # alpha_bar in float64 (diffusers keeps float32): its step arithmetic is then exact to double precision for a
    # float64 model, and a float32 model's tensors stay float32 (0-dim scalars do not promote them)
    s.alphas_cumprod = s.alphas_cumprod.double()
    for name in ("final_alpha_cumprod", "one"):
        if hasattr(s, name):
            setattr(s, name, torch.as_tensor(getattr(s, name)).double())
    return s


@dataclass
class Sampler:
    """A scheduler with ``steps`` inference timesteps and DDIM's eta (DDPM ignores it)."""

    scheduler: object
    steps: int
    eta: float = 1.0

    def __post_init__(self):
        self.kind = "ddpm" if type(self.scheduler).__name__.startswith("DDPM") else "ddim"
        self.scheduler.set_timesteps(self.steps)
        self.timesteps = [int(t) for t in self.scheduler.timesteps]

    def prev(self, t: int) -> int:
        return int(self.scheduler.previous_timestep(t)) if self.kind == "ddpm" else \
            t - self.scheduler.config.num_train_timesteps // self.steps

    def stochastic(self, i: int) -> bool:
        """Whether step i (0-based) adds noise: every DDIM step with eta > 0; every DDPM step but the last."""
        t = self.timesteps[i]
        if self.kind == "ddpm":
            return self.prev(t) >= 0
        return self.eta > 0 and float(self.scheduler._get_variance(t, self.prev(t))) > 0

    def std(self, i: int) -> float:
        t = self.timesteps[i]
        s = self.scheduler
        if self.kind == "ddim":
            return float(self.eta * s._get_variance(t, self.prev(t)).double() ** 0.5)
        return float(s._get_variance(t).double() ** 0.5) if self.stochastic(i) else 0.0

    def mean(self, eps: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
        """The mean of x_{t'} given x_t = ``x`` and the noise prediction ``eps`` (differentiable in eps)."""
        t, s = self.timesteps[i], self.scheduler
        if self.kind == "ddim":
            return s.step(eps, t, x, eta=self.eta, variance_noise=torch.zeros_like(x)).prev_sample
        tp = self.prev(t)
        # term by term as DDPMScheduler.step
        a = s.alphas_cumprod[t]
        a_prev = s.alphas_cumprod[tp] if tp >= 0 else s.one
        beta = 1 - a / a_prev
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        c0 = a_prev ** 0.5 * beta / (1 - a)
        ct = (1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)
        return c0 * x0 + ct * x

    def stds(self) -> torch.Tensor:
        return torch.tensor([self.std(i) for i in range(self.steps)], dtype=torch.float64)


def gaussian_logpdf(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """ln N(x; mean, std² I) per row: sum over all but the first axis."""
    d = x[0].numel()
    sq = ((x - mean) ** 2).reshape(len(x), -1).sum(1)
    return -sq / (2 * std ** 2) - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def step_logprob(sampler: Sampler, eps: torch.Tensor, i: int, x: torch.Tensor, x_prev: torch.Tensor) -> torch.Tensor:
    """ln p(x_prev | x_t = x) of step i under the noise prediction ``eps``, per row [B]; 0 for a deterministic step."""
    if not sampler.stochastic(i):
        return torch.zeros(len(x), dtype=x.dtype, device=x.device)
    return gaussian_logpdf(x_prev, sampler.mean(eps, i, x), sampler.std(i))


def step_kl(sampler: Sampler, eps: torch.Tensor, eps_ref: torch.Tensor, i: int, x: torch.Tensor) -> torch.Tensor:
    """KL(p_theta(.|x_t) || p_ref(.|x_t)) of step i, exact for two Gaussians of one variance:
    |mu_theta - mu_ref|²/(2 sigma²), per row (0 for a deterministic step)."""
    if not sampler.stochastic(i):
        return torch.zeros(len(x), dtype=x.dtype, device=x.device)
    d = sampler.mean(eps, i, x) - sampler.mean(eps_ref, i, x)
    return (d ** 2).reshape(len(x), -1).sum(1) / (2 * sampler.std(i) ** 2)
