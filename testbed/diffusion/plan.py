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
    models = paper_models(spec)
    half = 2  # fp16 frozen weights
    frozen = sum(n for name, n, _ in models if not name.startswith("LoRA"))
    trained = sum(n for name, n, _ in models if name.startswith("LoRA"))
    for name, n, role in models:
        lines.append(f"  {name}: {n / 1e6:,.2f} M parameters ({role})")
    B = spec.train.minibatch // spec.train.grad_accum
    weights_gb = frozen * half / 1e9
    opt_gb = trained * (4 + 4 + 8) / 1e9  # fp32 LoRA weights, gradients, AdamW moments
    unet_gb = models[0][1] * half / 1e9
    copy = spec.reference == "copy"
    ref = " + a frozen reference UNet" if copy else " (reference = adapter disabled)"
    for algo, _, _ in spec.algorithms:
        lines.append(f"  {algo}: models held: policy UNet{ref}"
                     f" + VAE + text encoder + reward model; weights and optimiser "
                     f"{weights_gb + copy * unet_gb + opt_gb:.2f} GB per GPU (fp16 frozen weights "
                     f"{weights_gb + copy * unet_gb:.2f}, LoRA + AdamW {opt_gb:.3f}) plus the activations of {B} "
                     f"latent(s) per micro-batch through the UNet with gradients (not estimated here: measure with "
                     f"a one-iteration run)")
    lines.append(f"  weights: {spec.model['name']} (Hugging Face cache; nothing is downloaded by --dry-run)")
    return "\n".join(lines)
