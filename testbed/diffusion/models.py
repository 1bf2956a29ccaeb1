"""Denoisers built offline from configs: a tiny class-conditional ``UNet2DModel`` (random, seeded weights; the
CPU study pre-trains it), and a logit-table-like denoiser for the cross-track identity test."""

from __future__ import annotations

import torch

from testbed.diffusion.policy import UNetDenoiser


def tiny_unet(size: int = 16, channels: int = 1, classes: int = 10, widths: tuple[int, ...] = (16, 32),
              layers: int = 1, seed: int = 0, dtype=torch.float32) -> UNetDenoiser:
    """A class-conditional UNet2DModel (``classes`` + 1 embeddings: the last is the null class of classifier-free
    guidance) of ``len(widths)`` resolutions, wrapped as eps = model(x, t, labels)."""
    from diffusers import UNet2DModel
    from diffusers.utils import logging

    logging.set_verbosity_error()  # its note on casting a model built from a config with .to(dtype)
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=tuple(widths),
                       layers_per_block=layers, down_block_types=("DownBlock2D",) * len(widths),
                       up_block_types=("UpBlock2D",) * len(widths), num_class_embeds=classes + 1,
                       norm_num_groups=min(8, widths[0]), attention_head_dim=None, add_attention=False)
    return UNetDenoiser(unet.to(dtype)).eval()


def downsampling_factor(widths) -> int:
    """How much a UNet of these resolutions shrinks an image (2 per down block but the last)."""
    return 2 ** (len(widths) - 1)


class TableDenoiser(torch.nn.Module):
    """eps(x, t, c) = table[c]: a noise prediction that depends on the class only ("tabular conditioning"). With
    one denoising step the policy is a Gaussian per class whose mean is affine in table[c]
    (tests/test_diffusion_cross_track.py)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float64).clone())

    def forward(self, x, t, cond):
        return self.table[cond].reshape(x.shape)
