"""``testbed diffusion run SPEC --dry-run``: the plan of a spec, offline — the models each algorithm holds, their
parameter counts (built from their published configs on the ``meta`` device: no weights, no download), the
trainable (LoRA) parameters and a memory estimate per GPU.

Stable Diffusion v1.5's UNet, VAE and CLIP text encoder configs are those of its ``model_index`` (diffusers
``UNet2DConditionModel`` / ``AutoencoderKL``, transformers ``CLIPTextModel``); the LAION aesthetic predictor is
an MLP on CLIP ViT-L/14 image embeddings (768 → 1024 → 128 → 64 → 16 → 1), as in DDPO's ``aesthetic_score``.
"""

from __future__ import annotations

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
AESTHETIC_MLP = (768, 1024, 128, 64, 16, 1)


def _count(build) -> tuple[int, object]:
    from accelerate import init_empty_weights

    with init_empty_weights():
        m = build()
    return sum(p.numel() for p in m.parameters()), m


def _lora_params(model, r: int, targets) -> int:
    import torch

    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            n += r * (mod.in_features + mod.out_features)
    return n


def paper_models(spec) -> list[tuple[str, int, str]]:
    """(model, parameters, role) of a Stable Diffusion spec, counted from configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet_n, unet = _count(lambda: UNet2DConditionModel(**SD15_UNET))
    vae_n, _ = _count(lambda: AutoencoderKL(**SD15_VAE))
    text_n, _ = _count(lambda: CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                            num_attention_heads=12, max_position_embeddings=77,
                                                            projection_dim=768)))
    out = [("UNet (SD v1.5)", unet_n, "policy backbone, frozen"), ("VAE (SD v1.5)", vae_n, "decoder, frozen"),
           ("CLIP ViT-L/14 text encoder", text_n, "prompt embeddings, frozen")]
    if spec.reward.get("kind") == "aesthetic":
        vis_n, _ = _count(lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=768)))
        mlp = sum(a * b + b for a, b in zip(AESTHETIC_MLP, AESTHETIC_MLP[1:]))
        out += [("CLIP ViT-L/14 image encoder", vis_n, "aesthetic reward, frozen"),
                ("LAION aesthetic MLP", mlp, "aesthetic reward, frozen")]
    if spec.lora:
        out.append(("LoRA adapter (UNet attention)", _lora_params(unet, spec.lora["r"],
                                                                   spec.lora.get("target_modules", LORA_TARGETS)),
                    "trained; pi_ref = adapter disabled"))
    return out


def plan_text(spec) -> str:
    lines = [f"spec {spec.name}: {len(spec.algorithms)} algorithm(s) × {len(spec.seeds)} seed(s), "
             f"{spec.train.iterations} iterations of {spec.train.batch} prompts; sampler {spec.sampler.scheduler} "
             f"{spec.sampler.steps} steps, eta {spec.sampler.eta}, guidance {spec.sampler.guidance}"]
    if spec.model["kind"] == "tiny":
        from testbed.diffusion.models import tiny_unet
        m = spec.model
        n = sum(p.numel() for p in tiny_unet(m["size"], m["channels"], 10, tuple(m["widths"]), m["layers"]).parameters())
        lines.append(f"  tiny UNet2DModel {m['size']}×{m['size']}×{m['channels']}: {n:,} parameters (pre-trained "
                     f"offline on {spec.pretrain.data}, {spec.pretrain.steps} steps)")
        return "\n".join(lines)
    from testbed.algorithms import ALGORITHMS
    from testbed.diffusion.stable import ANIMALS

    models = paper_models(spec)
    m, sp = spec.model, spec.sampler
    dt = m.get("dtype", spec.train.dtype)
    size, short = {"float16": (2, "fp16"), "bfloat16": (2, "bf16"), "float32": (4, "fp32"), "float64": (8, "fp64")}[dt]
    n = {name: k for name, k, _ in models}
    for name, k, role in models:
        lines.append(f"  {name}: {k / 1e6:,.2f} M parameters ({role})")
    copy = spec.reference == "copy"
    unet_gb = n["UNet (SD v1.5)"] * size / 1e9
    frozen_gb = (1 + copy) * unet_gb + n["VAE (SD v1.5)"] * size / 1e9  # the text encoder is let go after set-up
    reward_gb = 4 * (n.get("CLIP ViT-L/14 image encoder", 0) + n.get("LAION aesthetic MLP", 0)) / 1e9  # fp32, as DDPO
    opt_gb = n.get("LoRA adapter (UNet attention)", 0) * (4 + 4 + 8) / 1e9  # fp32 LoRA weights, gradients, AdamW moments
    latent = 4 * (m["resolution"] // 8) ** 2
    cfg_passes = 1 if sp.guidance == 1.0 else 2
    M = spec.train.minibatch // spec.train.grad_accum
    ref = " + a frozen reference UNet" if copy else " (reference = adapter disabled)"
    for algo, cfg, entry in spec.algorithms:
        k = ALGORITHMS[algo].sequences_per_item(cfg)
        batch = entry.get("train", {}).get("batch", spec.train.batch)
        traj_gb = batch * k * (sp.steps + 1) * latent * 4 / 1e9
        lines.append(f"  {algo}: models held: policy UNet{ref} + VAE + reward model (the text encoder only to embed "
                     f"the {len(ANIMALS) + 1} prompts); weights and optimiser {frozen_gb + reward_gb + opt_gb:.2f} GB "
                     f"per GPU (frozen weights {frozen_gb + reward_gb:.2f}: UNet and VAE {short} {frozen_gb:.2f}, reward "
                     f"fp32 {reward_gb:.2f}; LoRA + AdamW {opt_gb:.3f}); the batch's trajectories {traj_gb:.2f} GB "
                     f"({batch} × {k} × {sp.steps + 1} fp32 latents of {latent:,})")
    lines.append(f"  with gradients: a micro-batch of {M} item(s) backpropagates through the {sp.steps} steps of each of "
                 f"its trajectories, {cfg_passes} UNet pass(es) a step (Diffusion-DPO: one pass per image); those "
                 f"activations are not estimated here — measure with a one-iteration run, raise train.grad_accum to "
                 f"shrink them")
    ckpt = "on" if m.get("gradient_checkpointing") else "off"
    lines.append(f"  UNet gradient checkpointing {ckpt}; sampling and scoring without gradients {m['rollout_batch']} "
                 f"prompts per UNet pass (model.rollout_batch); the VAE decodes 8 latents at a time")
    lines.append(f"  weights: {m['name']} (Hugging Face cache; nothing is downloaded by --dry-run)")
    if spec.reward.get("kind") == "aesthetic":
        from testbed.diffusion.aesthetic import CLIP
        lines.append(f"  reward: LAION aesthetic MLP {spec.reward.get('weights')} on {spec.reward.get('clip', CLIP)}")
    return "\n".join(lines)
