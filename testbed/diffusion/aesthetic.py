"""The LAION aesthetic predictor as an image reward (``reward.kind: aesthetic``), as DDPO's ``aesthetic_score``
(kvablack/ddpo-pytorch ``aesthetic_scorer.py``, after christophschuhmann/improved-aesthetic-predictor): the CLIP
ViT-L/14 image embedding (``get_image_features``: the projected pooled output, here
``CLIPVisionModelWithProjection(...).image_embeds``) of the image preprocessed by CLIP's image processor, divided
by its L2 norm, through an MLP of linear layers 768 → 1024 → 128 → 64 → 16 → 1 (dropout between the first four,
inactive at evaluation; no non-linearity: the published predictor has none).

``reward.weights``: the MLP's state dict (``sac+logos+ava1-l14-linearMSE.pth``, keys ``layers.{0,2,4,6,7}``);
``reward.clip``: the CLIP model (default ``openai/clip-vit-large-patch14``), from the Hugging Face cache when the
hub is offline. Images arrive in [-1, 1] and are rounded to uint8 as DDPO does before the processor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from testbed.diffusion.plan import AESTHETIC_MLP as MLP_SIZES
from testbed.errors import InputError

CLIP = "openai/clip-vit-large-patch14"
WEIGHTS_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
               "sac+logos+ava1-l14-linearMSE.pth")
DROPOUT = (0.2, 0.2, 0.1)
BATCH = 32  # images per CLIP forward


class AestheticMLP(torch.nn.Module):
    """The predictor's layers under its state dict's names (``layers``: Linear at 0, 2, 4, 6, 7; Dropout at 1, 3, 5)."""

    def __init__(self):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(MLP_SIZES, MLP_SIZES[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(DROPOUT):
                layers.append(torch.nn.Dropout(DROPOUT[i]))
        self.layers = torch.nn.Sequential(*layers)

    def forward(self, embed):
        return self.layers(embed)


def weights_path(reward: dict) -> Path:
    p = Path(str(reward["weights"])).expanduser()
    if not p.is_file():
        raise InputError(f"reward.weights = {str(reward['weights'])!r} is not a file: the LAION aesthetic predictor's "
                         f"state dict (download it once from {WEIGHTS_URL})")
    return p


def check_aesthetic(reward: dict) -> None:
    """Before any work: the MLP weights file exists and the CLIP model's config is found."""
    from transformers import CLIPVisionConfig

    from testbed.diffusion.stable import _how, hub_kwargs, load

    weights_path(reward)
    name = reward.get("clip", CLIP)
    load(CLIPVisionConfig, name, "reward.clip", _how(name), **hub_kwargs(name))


class AestheticReward:
    """reward(images [B, 3, H, W] in [-1, 1], prompts) -> the predicted aesthetic score [B] (float64)."""

    def __init__(self, reward: dict, device=None):
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        from testbed.diffusion.stable import _how, hub_kwargs, load

        name = reward.get("clip", CLIP)
        kw, how = hub_kwargs(name), _how(name)
        self.processor = load(CLIPImageProcessor, name, "reward.clip", how, **kw)
        self.clip = load(CLIPVisionModelWithProjection, name, "reward.clip", how, **kw).eval().requires_grad_(False)
        self.mlp = AestheticMLP().eval().requires_grad_(False)
        state = torch.load(weights_path(reward), map_location="cpu", weights_only=True)  # saved from CUDA tensors
        try:
            self.mlp.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"reward.weights: not the LAION predictor's state dict {MLP_SIZES} "
                             f"({str(e).splitlines()[0]})") from None
        if self.clip.config.projection_dim != MLP_SIZES[0]:
            raise InputError(f"reward.clip: its image embedding has {self.clip.config.projection_dim} dimensions; the "
                             f"aesthetic MLP takes {MLP_SIZES[0]} (CLIP ViT-L/14)")
        self.to(device or "cpu")

    def to(self, device):
        self.device = torch.device(device)
        self.clip.to(self.device)
        self.mlp.to(self.device)
        return self

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        """The normalised CLIP image embeddings [B, 768] (float32)."""
        from testbed.diffusion.rewards import to_uint8

        out = []
        pixels = to_uint8(images)
        for s in range(0, len(pixels), BATCH):
            x = self.processor(images=list(pixels[s:s + BATCH]), return_tensors="pt").pixel_values
            e = self.clip(pixel_values=x.to(self.device, self.clip.dtype)).image_embeds.float()
            out.append(e / torch.linalg.vector_norm(e, dim=-1, keepdim=True))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(self, images, prompts) -> np.ndarray:
        return self.mlp(self.embed(images)).squeeze(1).double().cpu().numpy()
