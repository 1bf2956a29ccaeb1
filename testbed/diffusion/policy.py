"""The diffusion policy: a denoising trajectory is the response, its log-probability the sum of the sampler's
Gaussian step log-densities (:mod:`testbed.diffusion.sampler`).

It offers the LM policy's interface (:class:`~testbed.llm.policy.LMPolicy`) so that the one implementation of
each method runs on it unchanged: a prompt is a conditioning tensor ``q`` (class labels [B], or text embeddings
[B, L, E]) with a mask ``qm``; a response ``y`` is the trajectory x_T, x_{t_1}, …, x_0 flattened to one row
[B, (T + 1)·C·H·W]; ``logprobs`` gives the per-step log-probabilities [B, T] and the mask of the stochastic steps
(the "tokens"). The reference policy is a frozen copy of the denoiser, or the same model with its LoRA adapter
disabled.

The denoiser is any module ``eps = model(x, t, cond)``: :class:`UNetDenoiser` wraps a diffusers ``UNet2DModel``
(class labels) or ``UNet2DConditionModel`` (text embeddings); classifier-free guidance mixes the conditional and
the unconditional prediction, eps_u + w·(eps_c - eps_u) (w = 1: conditional only, no second pass).
"""

from __future__ import annotations

import contextlib
import copy

import torch

from testbed.diffusion.sampler import Sampler, step_kl, step_logprob
from testbed.errors import InputError


class UNetDenoiser(torch.nn.Module):
    """eps = unet(x, t, cond): class labels for a ``UNet2DModel``, embeddings for a ``UNet2DConditionModel`` — or,
    with ``prompt_embeds`` [P, L, E] (a buffer, not saved with the weights), prompt indices into that table. The
    UNet runs in its own dtype; eps comes back in x's."""

    def __init__(self, unet, prompt_embeds: torch.Tensor | None = None):
        super().__init__()
        self.unet = unet
        self.text = hasattr(unet.config, "cross_attention_dim") and getattr(unet.config, "cross_attention_dim", None)
        self.register_buffer("prompt_embeds", prompt_embeds, persistent=False)

    def forward(self, x, t, cond):
        t = t.to(x.device) if torch.is_tensor(t) and t.ndim == 1 else torch.full((len(x),), int(t), dtype=torch.long,
                                                                                 device=x.device)
        dtype = next(self.unet.parameters()).dtype  # (diffusers' .dtype walks every module: per call, per step)
        if self.text:
            emb = self.prompt_embeds[cond] if self.prompt_embeds is not None else cond
            return self.unet(x.to(dtype), t, encoder_hidden_states=emb.to(dtype)).sample.to(x.dtype)
        return self.unet(x.to(dtype), t, class_labels=cond).sample.to(x.dtype)


def with_lora(net, lora: dict | None, targets):
    """``net`` with a peft LoRA adapter of the spec's ``lora`` block (r, alpha, target_modules, default
    ``targets``) — its base weights frozen, the adapter's in float32 — or ``net`` itself without one."""
    if not lora:
        return net
    from peft import LoraConfig, get_peft_model
    return get_peft_model(net, LoraConfig(r=lora["r"], lora_alpha=lora.get("alpha", lora["r"]),
                                          target_modules=list(lora.get("target_modules", targets))))


def check_lora_targets(net, lora: dict | None, targets, what: str) -> None:
    """Each of the ``lora`` block's ``target_modules`` (default ``targets``) names a module of ``net`` as peft matches
    a list (the module's full name or its last dotted parts); else one line naming the first that does not."""
    if not lora:
        return
    modules = list(net.named_modules())
    for t in lora.get("target_modules", targets):
        if not any(n == t or n.endswith("." + t) for n, _ in modules):
            layers = sorted({n.rsplit(".", 1)[-1] for n, m in modules
                             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and not n.rsplit(".", 1)[-1].isdigit()})
            raise InputError(f"lora.target_modules: {t!r} names no module of the {what} (its layers: "
                             f"{', '.join(layers[:10])}{', ...' if len(layers) > 10 else ''})")


def unwrap(model):
    return getattr(model, "module", model)


class DiffusionPolicy:
    """Sampling and per-step log-probabilities of a denoiser under a stochastic sampler.

    ``shape``: (C, H, W) of the image; ``guidance``: the CFG weight w >= 0; ``null``: the unconditional
    conditioning (the null class label, or an empty-prompt embedding [1, L, E]); ``ref``: "copy" (a frozen
    deep copy), "adapter" (a peft model: adapter disabled) or None (no reference)."""

    def __init__(self, model, sampler: Sampler, shape: tuple[int, int, int], guidance: float = 1.0,
                 null=None, ref: str | None = "copy"):
        self.model, self.sampler, self.shape = model, sampler, tuple(shape)
        self.guidance, self.null = float(guidance), null
        self.ref_kind = ref
        self.ref_model = copy.deepcopy(model).requires_grad_(False).eval() if ref == "copy" else None
        self.dim = self.shape[0] * self.shape[1] * self.shape[2]
        # the LM interface's names (the algorithms read them): no EOS, no padding, no temperature
        self.eos_id = self.pad_id = None

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @property
    def dtype(self):
        return next(unwrap(self.model).parameters()).dtype

    @property
    def device(self):
        return next(unwrap(self.model).parameters()).device

    def encode(self, prompts, max_length=None):
        """Class labels (ints) -> (q [B], qm [B, 1])."""
        q = torch.as_tensor(list(prompts), dtype=torch.long, device=self.device)
        return q, torch.ones(len(q), 1, dtype=torch.long, device=self.device)

    # -- the noise prediction, with guidance --
    def eps(self, model, x, t, q):
        if self.guidance == 1.0 or self.null is None:
            return model(x, t, q)
        null = self.null.expand(len(q), *self.null.shape[1:]) if torch.is_tensor(self.null) and self.null.ndim > 1 \
            else torch.full_like(q, int(self.null))
        both = model(torch.cat([x, x]), t, torch.cat([null.to(q.device), q]))
        u, c = both[:len(x)], both[len(x):]
        return u + self.guidance * (c - u)

    @contextlib.contextmanager
    def _reference(self):
        if self.ref_kind == "adapter":
            with unwrap(self.model).disable_adapter():
                yield self.model
        else:
            yield self.ref_model

    # -- trajectories --
    def frames(self, y: torch.Tensor) -> torch.Tensor:
        """A flattened trajectory [B, (T + 1)·D] as frames [B, T + 1, C, H, W]."""
        return y.reshape(len(y), self.steps + 1, *self.shape)

    def images(self, y: torch.Tensor) -> torch.Tensor:
        """The final images x_0 [B, C, H, W] of trajectories (in the denoiser's space: latents for a latent model)."""
        return self.frames(y)[:, -1]

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Final images as the reward sees them, [-1, 1] (here the denoiser's own space)."""
        return x0

    @torch.no_grad()
    def generate(self, q, qm=None, model=None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Trajectories from x_T ~ N(0, I) (or ``noise``), drawn with torch's global generator."""
        model = self.model if model is None else model
        s = self.sampler
        x = torch.randn(len(q), *self.shape, dtype=self.dtype, device=self.device) if noise is None else noise
        out = [x]
        for i, t in enumerate(s.timesteps):
            mean = s.mean(self.eps(model, x, t, q), i, x)
            x = mean + s.std(i) * torch.randn_like(x) if s.stochastic(i) else mean
            out.append(x)
        return torch.stack(out, 1).reshape(len(q), -1)

    def logprobs(self, q, qm, y, model=None):
        """Per-step ln pi(x_{t'} | x_t, q) [B, T] (0 at deterministic steps) and the mask of stochastic steps."""
        model = self.model if model is None else model
        f, s = self.frames(y), self.sampler
        lp = torch.stack([step_logprob(s, self.eps(model, f[:, i], t, q), i, f[:, i], f[:, i + 1])
                          for i, t in enumerate(s.timesteps)], 1)
        return lp, self.step_mask(len(y))

    def step_mask(self, n: int) -> torch.Tensor:
        m = torch.tensor([float(self.sampler.stochastic(i)) for i in range(self.steps)], device=self.device)
        return m.expand(n, -1)

    def seq_logprob(self, q, qm, y, model=None) -> torch.Tensor:
        """ln pi(trajectory | q): the sum of the step log-probabilities [B] (ln p(x_T) is the same under every
        policy and is left out)."""
        return self.logprobs(q, qm, y, model)[0].sum(1)

    def ref_logprobs(self, q, qm, y) -> torch.Tensor:
        with torch.no_grad(), self._reference() as ref:
            return self.logprobs(q, qm, y, ref)[0]

    def kl_to_reference(self, q, y) -> torch.Tensor:
        """Sum over the trajectory's steps of the exact per-step KL(pi_theta || pi_ref) at its states [B] (an
        unbiased estimate of the trajectory KL, >= 0, 0 at the reference)."""
        f, s = self.frames(y), self.sampler
        with torch.no_grad():  # pi_theta's predictions first: with ref "adapter" the reference is the same model
            eps = [self.eps(self.model, f[:, i], t, q) for i, t in enumerate(s.timesteps)]
            with self._reference() as ref:
                return torch.stack([step_kl(s, e, self.eps(ref, f[:, i], t, q), i, f[:, i])
                                    for i, (t, e) in enumerate(zip(s.timesteps, eps))], 1).sum(1)
