"""The CPU task's data and pre-training, fully offline: scikit-learn's bundled 8×8 handwritten digits (upsampled)
or procedural shapes, and a class-conditional tiny UNet pre-trained on them with the denoising (epsilon) loss
(Ho et al. 2020), cached per (config, seed, thread count) so that every run of a study starts from the same weights."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from testbed.diffusion.models import tiny_unet
from testbed.diffusion.sampler import make_scheduler
from testbed.io import atomic_write
from testbed.training import torch_threads


def digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits in [-1, 1], [N, 1, size, size] (bilinear resize of the 8×8 originals), and labels 0..9."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images / 16.0 * 2 - 1, dtype=torch.float32)[:, None]
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1).numpy(), d.target.astype(np.int64)


def shapes(size: int, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Procedural shapes (0: square, 1: disc, 2: horizontal bar, 3: vertical bar) of random size and place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] + 0.5
    out, labels = np.full((n, 1, size, size), -1.0, np.float32), rng.integers(4, size=n)
    for i, k in enumerate(labels):
        r = rng.uniform(0.15, 0.3) * size
        cy, cx = rng.uniform(r, size - r, 2)
        m = [np.maximum(abs(yy - cy), abs(xx - cx)) < r, (yy - cy) ** 2 + (xx - cx) ** 2 < r * r,
             (abs(yy - cy) < r / 3) & (abs(xx - cx) < r * 1.4), (abs(xx - cx) < r / 3) & (abs(yy - cy) < r * 1.4)][k]
        out[i, 0][m] = 1.0
    return out, labels


def dataset(pre, model: dict):
    return digits(model["size"]) if pre.data == "digits" else shapes(model["size"])


def cache_dir(pre) -> Path:
    return Path(pre.cache or os.environ.get("TESTBED_CACHE") or Path.home() / ".cache" / "rebel-testbed") / "diffusion"


def pretrained(model: dict, pre, sampler_cfg, seed: int, dtype=torch.float32, threads: int = 1):
    """The tiny UNet pre-trained on the data (cached: the file's name hashes everything that determines it, the
    library versions and this code included: :func:`_code_version`).

    Pre-training runs at ``threads`` torch threads (the spec's ``train.threads``; 0: torch's default) and the
    count in use is part of the cache key: float32 convolutions round differently with the thread count, so a
    model trained at another count is another model, never served from the cache for this one."""
    with torch_threads(threads) as used:
        return _pretrained(model, pre, sampler_cfg, seed, dtype, used)


def _code_version() -> str:
    """What else decides the pre-trained weights: the versions of diffusers (the UNet, the scheduler), numpy and
    scikit-learn (the data), and the source of the data, model and sampler modules (an edit re-trains)."""
    import diffusers
    import sklearn

    from testbed.diffusion import models, sampler
    h = hashlib.sha256(f"{diffusers.__version__} {np.__version__} {sklearn.__version__}".encode())
    for module in (__file__, models.__file__, sampler.__file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:16]


def _pretrained(model: dict, pre, sampler_cfg, seed: int, dtype, threads: int):
    key = json.dumps({"model": model, "pre": {k: getattr(pre, k) for k in ("data", "steps", "batch", "lr", "uncond")},
                      "T": sampler_cfg.train_timesteps, "betas": [sampler_cfg.beta_schedule, sampler_cfg.beta_start,
                                                                    sampler_cfg.beta_end], "seed": seed,
                      "torch": torch.__version__, "threads": threads, "code": _code_version()}, sort_keys=True)
    path = cache_dir(pre) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    x, labels = dataset(pre, model)
    classes = int(labels.max()) + 1
    net = tiny_unet(model["size"], model["channels"], classes, tuple(model["widths"]), model["layers"],
                    model["seed"] + seed)
    if path.is_file():
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.to(dtype), classes, (x, labels)
    sched = make_scheduler("ddpm", sampler_cfg.train_timesteps, sampler_cfg.beta_schedule, sampler_cfg.beta_start,
                           sampler_cfg.beta_end)
    g = torch.Generator().manual_seed(10_007 * (seed + 1))
    xs, ys = torch.as_tensor(x), torch.as_tensor(labels)
    opt = torch.optim.AdamW(net.parameters(), lr=pre.lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.CosineAnnealingLR(opt, pre.steps)
    net.train()
    for _ in range(pre.steps):
        i = torch.randint(len(xs), (pre.batch,), generator=g)
        x0, c = xs[i], ys[i].clone()
        c[torch.rand(pre.batch, generator=g) < pre.uncond] = classes  # the null class
        t = torch.randint(sampler_cfg.train_timesteps, (pre.batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        xt = sched.add_noise(x0, noise, t)
        eps = net.unet(xt, t, class_labels=c).sample
        loss = torch.nn.functional.mse_loss(eps, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
    net.eval().zero_grad(set_to_none=True)  # no pre-training gradient may reach the fine-tuning's first step
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: torch.save(net.state_dict(), p))
    return net.to(dtype), classes, (x, labels)
