"""The paper-scale back-end: Stable Diffusion (v1.5 by default) as a :class:`~testbed.diffusion.policy.DiffusionPolicy`.

The pipeline's components are loaded with diffusers / transformers from ``model.name`` — a local folder in the
pipeline layout (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``) or a Hugging Face hub name, read from the
cache only when ``HF_HUB_OFFLINE=1`` (nothing is downloaded then; a missing model is one line naming
``model.name`` and how to get it). The prompt list (DDPO's 45 animals, and the empty prompt for classifier-free
guidance) is encoded once by the CLIP text encoder, which is then let go: a prompt is its index, and the denoiser
reads its embedding from a table (:class:`~testbed.diffusion.policy.UNetDenoiser`). The trajectory is in latent
space, sampled and scored per step by the same sampler code as the tiny model (:mod:`testbed.diffusion.sampler`,
the spec's DDIM scheduler) in float32 whatever the UNet's dtype; the VAE decodes the final latent for the reward.
LoRA (the spec's ``lora`` block, default the attention projections to_q, to_k, to_v, to_out.0) goes on the UNet;
the reference is the adapter disabled.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from testbed.diffusion.plan import LORA_TARGETS
from testbed.diffusion.policy import DiffusionPolicy, UNetDenoiser, check_lora_targets, with_lora
from testbed.errors import InputError

ANIMALS = ("cat", "dog", "horse", "monkey", "rabbit", "zebra", "spider", "bird", "sheep", "deer", "cow", "goat",
           "lion", "tiger", "bear", "raccoon", "fox", "wolf", "lizard", "beetle", "ant", "butterfly", "fish", "shark",
           "whale", "dolphin", "squirrel", "mouse", "rat", "snake", "turtle", "frog", "chicken", "duck", "goose", "bee",
           "pig", "turkey", "fly", "llama", "camel", "bat", "gorilla", "hedgehog", "kangaroo")  # DDPO's simple_animals.txt
DECODE_BATCH = 8  # latents per VAE decode (a 512² decode of a whole batch does not fit)


def device():
    """The device accelerate will put the prepared UNet on (the VAE and the text encoder go with it)."""
    from accelerate import PartialState

    return PartialState().device


def hub_kwargs(name: str, revision=None) -> dict:
    """from_pretrained keyword arguments: the cache only when the hub is offline (or for a local folder)."""
    if Path(name).expanduser().is_dir():
        return {}
    return {"local_files_only": os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"),
            **({"revision": revision} if revision else {})}


def load(cls, name: str, where: str, how: str, subfolder: str | None = None, config_only: bool = False, **kw):
    """``cls.from_pretrained(name, subfolder=...)`` (``config_only``: its config), a missing model one line."""
    args = {**({"subfolder": subfolder} if subfolder else {}), **kw}
    path = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    read = cls.load_config if config_only and hasattr(cls, "load_config") else cls.from_pretrained
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huggingface_hub's deprecation notes on diffusers' arguments: one line
            return read(path, **args)
    except (OSError, ValueError) as e:
        part = f" ({subfolder}/)" if subfolder else ""
        raise InputError(f"{where} = {name!r}{part} not found{' offline' if args.get('local_files_only') else ''}: "
                         f"{how} ({type(e).__name__})") from None


def _how(name: str) -> str:
    return f"download it once with `huggingface-cli download {name}` (or give a local folder)"


def _dtype(spec):
    from testbed.diffusion.train import DTYPES

    return DTYPES[spec.model.get("dtype", spec.train.dtype)]


def check_stable(spec) -> None:
    """Before any work: the dtype runs on this device, and every component's files are where the spec says (their
    configs read, offline when the hub is)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoConfig

    m = spec.model
    if _dtype(spec) == torch.float16 and device().type == "cpu":
        raise InputError("model.dtype float16 needs a GPU (CUDA): on CPU half precision is partly unsupported and slow; "
                         "use float32 (or bfloat16) here")
    kw, how = hub_kwargs(m["name"], m.get("revision")), _how(m["name"])
    unet_config = load(UNet2DConditionModel, m["name"], "model.name", how, "unet", config_only=True, **kw)
    if spec.lora:  # its targets exist: on the UNet built from its config on the meta device (no weights)
        from accelerate import init_empty_weights
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(unet_config)
        check_lora_targets(unet, spec.lora, LORA_TARGETS, "Stable Diffusion UNet")
    load(AutoencoderKL, m["name"], "model.name", how, "vae", config_only=True, **kw)
    load(AutoConfig, m["name"], "model.name", how, "text_encoder", **kw)
    if spec.reward.get("kind") == "aesthetic":
        from testbed.diffusion.aesthetic import check_aesthetic
        check_aesthetic(spec.reward)


class StablePolicy(DiffusionPolicy):
    """A latent diffusion policy: trajectories of latents in float32, ``decode`` the VAE (for the reward)."""

    def __init__(self, model, sampler, shape, guidance, null, ref, vae, rollout_batch: int = 16):
        super().__init__(model, sampler, shape, guidance, null, ref)
        self.vae, self.rollout_batch = vae, rollout_batch

    def _chunked(self, fn, *args):
        """``fn`` on ``rollout_batch`` rows of ``args`` at a time, concatenated (a whole batch of 512² latents
        through the UNet at once does not fit)."""
        n = self.rollout_batch
        if len(args[0]) <= n:
            return fn(*args)
        return torch.cat([fn(*(a[s:s + n] for a in args)) for s in range(0, len(args[0]), n)])

    def generate(self, q, qm=None, model=None, noise=None):
        """Trajectories, ``rollout_batch`` prompts at a time (each chunk's x_T and step noises drawn in turn)."""
        if noise is not None:
            return self._chunked(lambda a, z: super(StablePolicy, self).generate(a, None, model, z), q, noise)
        return self._chunked(lambda a: super(StablePolicy, self).generate(a, None, model), q)

    def logprobs(self, q, qm, y, model=None):
        lp = self._chunked(lambda a, b: super(StablePolicy, self).logprobs(a, None, b, model)[0], q, y)
        return lp, self.step_mask(len(y))

    def kl_to_reference(self, q, y):
        return self._chunked(super().kl_to_reference, q, y)

    @property
    def dtype(self):
        """The trajectories' dtype, of the sampler's arithmetic and the log-densities: float32 at least (a half-
        precision UNet runs in its own dtype; a sum of 16,384 squared latents needs more than fp16's 11 bits)."""
        return torch.promote_types(super().dtype, torch.float32)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Latents [B, 4, h, w] -> images [B, 3, H, W] in [-1, 1] (float32), DECODE_BATCH at a time."""
        vae = self.vae
        z = x0.to(vae.device, vae.dtype) / vae.config.scaling_factor
        return torch.cat([vae.decode(z[s:s + DECODE_BATCH]).sample.float().clamp(-1, 1)
                          for s in range(0, len(z), DECODE_BATCH)])


@torch.no_grad()
def prompt_embeddings(tokenizer, text_encoder, prompts) -> torch.Tensor:
    """The text encoder's last hidden states of ``prompts`` padded to its context length [P, L, E] (SD's
    conditioning: ``CLIPTextModel(ids)[0]``)."""
    L = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    ids = tokenizer(list(prompts), padding="max_length", max_length=L, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def stable_policy(spec, sampler, seed: int) -> tuple[StablePolicy, int]:
    """The policy of a ``model.kind: stable_diffusion`` spec (its adapter initialised from ``seed``) and its number
    of prompts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging
    from transformers import AutoTokenizer, CLIPTextModel

    logging.set_verbosity_error()
    m, dtype, dev = spec.model, _dtype(spec), device()
    kw, how = {**hub_kwargs(m["name"], m.get("revision")), "torch_dtype": dtype}, _how(m["name"])
    unet = load(UNet2DConditionModel, m["name"], "model.name", how, "unet", **kw).to(dev)  # before any copy (reference: copy)
    vae = load(AutoencoderKL, m["name"], "model.name", how, "vae", **kw).to(dev).requires_grad_(False).eval()
    kw["dtype"] = kw.pop("torch_dtype")  # transformers' name
    text = load(CLIPTextModel, m["name"], "model.name", how, "text_encoder", **kw).to(dev).eval()
    tok = load(AutoTokenizer, m["name"], "model.name", how, "tokenizer", **hub_kwargs(m["name"], m.get("revision")))
    prompts = ANIMALS
    emb = prompt_embeddings(tok, text, (*prompts, "")).to(dtype)  # the empty prompt last: CFG's unconditional
    del text
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    down = 2 ** (len(unet.config.block_out_channels) - 1)
    if m["resolution"] % (factor * down):
        raise InputError(f"model.resolution = {m['resolution']} is not divisible by the VAE's {factor} × the UNet's "
                         f"{down} down-sampling")
    if m.get("gradient_checkpointing"):
        unet.enable_gradient_checkpointing()
    torch.manual_seed(seed)  # the LoRA A matrices' initialisation
    net = with_lora(UNetDenoiser(unet, emb).eval(), spec.lora, LORA_TARGETS)
    size = m["resolution"] // factor
    shape = (unet.config.in_channels, size, size)
    return StablePolicy(net, sampler, shape, spec.sampler.guidance, len(prompts), spec.reference, vae,
                        m.get("rollout_batch", 16)), len(prompts)
