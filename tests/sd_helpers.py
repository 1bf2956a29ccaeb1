"""Tiny Stable-Diffusion-shaped components built offline from configs (random, seeded weights) and saved with
``save_pretrained`` in the pipeline layout (unet/, vae/, text_encoder/, tokenizer/), a tiny CLIP image encoder and
processor (clip/) and a random LAION-shaped aesthetic MLP (aesthetic.pth), with a spec that points at them."""

from pathlib import Path

import torch
import yaml

RESOLUTION = 64  # the VAE's 8 × the UNet's 2 → 8×8 latents


def save_tiny_stable(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from testbed.diffusion.aesthetic import AestheticMLP
    from testbed.diffusion.stable import ANIMALS
    from testbed.llm.toy import toy_tokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=4, norm_num_groups=4).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  norm_num_groups=4, sample_size=RESOLUTION).save_pretrained(folder / "vae")
    tok = toy_tokenizer(ANIMALS)
    tok.model_max_length = 6
    tok.save_pretrained(folder / "tokenizer")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=6, pad_token_id=0, eos_token_id=1,
                                 bos_token_id=2)).save_pretrained(folder / "text_encoder")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8,
                                                   projection_dim=768)).save_pretrained(folder / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder / "clip")
    torch.save(AestheticMLP().state_dict(), folder / "aesthetic.pth")
    return folder


def stable_spec(folder: Path, path: Path, **over) -> Path:
    """A spec of the tiny components: 2 DDIM steps, guidance 2 (CFG with the empty prompt), LoRA, aesthetic."""
    raw = {"name": "tiny_sd", "kind": "diffusion",
           "model": {"kind": "stable_diffusion", "name": str(folder), "resolution": RESOLUTION, "dtype": "float32"},
           "sampler": {"scheduler": "ddim", "steps": 2, "eta": 1.0, "guidance": 2.0, "train_timesteps": 1000,
                       "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
           "prompts": {"kind": "animals"},
           "reward": {"kind": "aesthetic", "weights": str(folder / "aesthetic.pth"), "clip": str(folder / "clip")},
           "lora": {"r": 2, "alpha": 2}, "reference": "adapter",
           "algorithms": [{"name": "rebel", "eta": 1.0}], "seeds": [0],
           "train": {"iterations": 1, "batch": 2, "minibatch": 2, "lr": 1e-2, "eval_every": 1, "eval_prompts": 2}}
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    path.write_text(yaml.safe_dump(raw))
    return path
