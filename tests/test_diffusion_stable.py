"""The Stable Diffusion back-end on tiny SD-shaped components saved offline (tests/sd_helpers.py): the per-step
log-probability of the text-conditioned, guided latent policy is the Gaussian closed form of DDIM computed here
from the UNet and the text encoder directly; the KL to the reference (LoRA adapter disabled) is 0 there and > 0
after an update; REBEL, PPO and both DPOs run an iteration through ``testbed diffusion run`` with the tiny track's
metrics schema, the same bytes twice; the aesthetic reward is the normalised CLIP embedding through the MLP
computed here in numpy; missing weights and float16 on CPU are one line, exit 2, nothing written."""

import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sd_helpers import RESOLUTION, save_tiny_stable, stable_spec  # noqa: E402
from test_diffusion_sampler import one_thread  # noqa: E402, F401  (the module's one torch thread, autouse)

from testbed.cli import main  # noqa: E402
from testbed.diffusion.spec import load_diffusion_spec  # noqa: E402
from testbed.diffusion.stable import ANIMALS  # noqa: E402
from testbed.diffusion.train import build  # noqa: E402
from testbed.results import LM_COLUMNS  # noqa: E402

TIMING = {"wall_time", "peak_memory_mb", "tokens_per_s", "eps"}


@pytest.fixture(scope="module")
def comps(tmp_path_factory):
    return save_tiny_stable(tmp_path_factory.mktemp("sd"))


def built(comps, tmp_path, algo=0, **over):
    spec = load_diffusion_spec(stable_spec(comps, tmp_path / "spec.yaml", **over))
    name, cfg, _ = spec.algorithms[algo]
    torch.manual_seed(0)
    return (*build(spec, name, cfg, 0), spec)


def test_guided_text_conditioned_step_logprob_is_the_ddim_gaussian_closed_form(comps, tmp_path):
    """float64 components: eps_u + w·(eps_c - eps_u) from the UNet on the text encoder's embeddings of the prompt
    and of the empty prompt, DDIM's mean (Song et al. eq. 12) and sigma from alpha_bar, and the Gaussian density."""
    from diffusers import UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    ctx, _, P, spec = built(comps, tmp_path, model={"dtype": "float64", "rollout_batch": 2},  # 3 prompts: 2 chunks
                            sampler={"steps": 3, "eta": 0.7})
    pol = ctx.policy
    assert P == len(ANIMALS) == 45 and pol.shape == (4, RESOLUTION // 8, RESOLUTION // 8) and pol.dtype == torch.float64
    prompts = [3, 44, 0]
    q, qm = pol.encode(prompts)
    torch.manual_seed(1)
    y = pol.generate(q, qm)
    lp, mask = pol.logprobs(q, qm, y)
    assert mask.tolist() == [[1.0] * 3] * 3

    unet = UNet2DConditionModel.from_pretrained(comps / "unet", torch_dtype=torch.float64)
    text = CLIPTextModel.from_pretrained(comps / "text_encoder", dtype=torch.float64)
    tok = AutoTokenizer.from_pretrained(comps / "tokenizer")
    ids = tok([ANIMALS[i] for i in prompts] + [""], padding="max_length", max_length=6, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = text(ids)[0]
    cond, null = emb[:3], emb[3:].expand(3, -1, -1)
    # alpha_bar of the scaled_linear schedule as diffusers defines it (betas and their product in float32)
    a = (1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2).cumprod(0).double()
    ts = [667, 334, 1]  # 3 of 1000 steps, offset 1
    f = pol.frames(y)
    for i, t in enumerate(ts):
        x, x_next = f[:, i], f[:, i + 1]
        with torch.no_grad():
            e_c = unet(x, t, encoder_hidden_states=cond).sample
            e_u = unet(x, t, encoder_hidden_states=null).sample
        eps = e_u + 2.0 * (e_c - e_u)
        at, ap = a[t], a[t - 333] if t - 333 >= 0 else a[0]
        sigma = 0.7 * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
        x0 = (x - (1 - at).sqrt() * eps) / at.sqrt()
        mean = ap.sqrt() * x0 + (1 - ap - sigma ** 2).sqrt() * eps
        d = x[0].numel()
        want = -((x_next - mean) ** 2).flatten(1).sum(1) / (2 * sigma ** 2) - d * math.log(sigma) \
            - 0.5 * d * math.log(2 * math.pi)
        np.testing.assert_allclose(lp[:, i].detach().numpy(), want.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pol.seq_logprob(q, qm, y).detach().numpy(), lp.sum(1).detach().numpy(), rtol=0, atol=1e-9)


def test_kl_to_the_reference_is_0_at_the_adapter_disabled_and_positive_after_an_update(comps, tmp_path):
    ctx, algo, _, _ = built(comps, tmp_path)
    pol = ctx.policy
    q, qm = pol.encode([1, 2])
    y = ctx.sample(q, qm)
    assert pol.kl_to_reference(q, y).tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(pol.ref_logprobs(q, qm, y).numpy(), pol.logprobs(q, qm, y)[0].detach().numpy())
    algo.diffusion_update(q, qm)
    kl = pol.kl_to_reference(q, y)
    assert (kl > 0).all(), kl
    with pol._reference() as ref:  # the adapter disabled is still the saved UNet
        from diffusers import UNet2DConditionModel
        saved = UNet2DConditionModel.from_pretrained(comps / "unet")
        x = pol.frames(y)[:, 0]
        emb = ref.base_model.model.prompt_embeds[q]
        with torch.no_grad():
            torch.testing.assert_close(ref(x, 667, q), saved(x, 667, encoder_hidden_states=emb).sample, rtol=0, atol=1e-6)


def rows(d):
    with open(Path(d) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


ALGOS = [{"name": "rebel", "eta": 1.0, "epochs": 1}, {"name": "ppo", "clip_eps": 0.1, "epochs": 1},
         {"name": "dpo", "mode": "online", "beta": 0.1, "epochs": 1},
         {"name": "dpo", "mode": "online", "loss": "diffusion", "beta": 0.001, "epochs": 1}]


def test_rebel_ppo_dpo_iterate_through_the_cli_with_the_tiny_tracks_schema_same_bytes_twice(comps, tmp_path):
    """All four once; REBEL again in a spec of its own (the same run id, seed and settings): its rows and sample
    files are the same bytes."""
    from testbed.results import file_columns

    spec = stable_spec(comps, tmp_path / "spec.yaml", algorithms=ALGOS)
    again = stable_spec(comps, tmp_path / "again.yaml", algorithms=ALGOS[:1])
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["diffusion", "run", str(again), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        with open(d / "metrics.csv", newline="") as fh:
            assert next(csv.reader(fh)) == list(file_columns(LM_COLUMNS))  # the tiny track's schema
    r, r2 = rows(a), rows(b)
    assert [x for x in r if x["run_id"] == "rebel-0-s0"] == r2 and len(r2) == 2
    for f in ("rebel-0-s0.npz", "reference-s0.npz"):
        assert (a / "samples" / f).read_bytes() == (b / "samples" / f).read_bytes(), f
    assert sorted({x["run_id"] for x in r}) == ["dpo-2-s0", "dpo-3-s0", "ppo-1-s0", "rebel-0-s0"]
    for x in r:
        if x["iteration"] == "0":
            assert float(x["eval/kl"]) == 0
        else:
            assert float(x["eval/kl"]) > 0 and math.isfinite(float(x["loss"])) and x["objective/scores"] != ""
    assert {x["run_id"]: x["queries"] for x in r if x["iteration"] == "1"} == \
        {"rebel-0-s0": "4", "ppo-1-s0": "2", "dpo-2-s0": "4", "dpo-3-s0": "4"}
    imgs = np.load(a / "samples" / "rebel-0-s0.npz")
    assert imgs["images"].shape == (2, 3, RESOLUTION, RESOLUTION) and imgs["labels"].tolist() == [0, 1]
    assert np.abs(imgs["images"]).max() <= 1


def test_aesthetic_score_is_the_normalised_clip_embedding_through_the_mlp(comps):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from testbed.diffusion.aesthetic import AestheticReward

    reward = AestheticReward({"kind": "aesthetic", "weights": str(comps / "aesthetic.pth"), "clip": str(comps / "clip")})
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 40, 48, generator=g) * 2.4 - 1.2  # some outside [-1, 1]: clipped
    got = reward(images, np.zeros(3))
    # here: uint8 as DDPO ((x + 1)/2·255 rounded), CLIP's processor, the vision tower's pooled output, the projection
    u8 = np.round((np.clip(images.numpy().astype(np.float64), -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    pixels = CLIPImageProcessor.from_pretrained(comps / "clip")(images=list(u8), return_tensors="pt").pixel_values
    clip = CLIPVisionModelWithProjection.from_pretrained(comps / "clip").eval()
    with torch.no_grad():
        pooled = clip.vision_model(pixel_values=pixels).pooler_output.double().numpy()
    e = pooled @ clip.visual_projection.weight.detach().double().numpy().T
    e = e / np.sqrt((e ** 2).sum(1, keepdims=True))
    sd = torch.load(comps / "aesthetic.pth", weights_only=True)
    assert sorted(sd) == sorted(f"layers.{k}.{w}" for k in (0, 2, 4, 6, 7) for w in ("weight", "bias"))  # LAION's names
    for k in (0, 2, 4, 6, 7):  # linear layers only: the predictor has no non-linearity
        e = e @ sd[f"layers.{k}.weight"].double().numpy().T + sd[f"layers.{k}.bias"].double().numpy()
    assert got.shape == (3,) and got.dtype == np.float64 and np.ptp(got) > 0
    np.testing.assert_allclose(got, e[:, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("over, field", [
    ({"model": {"name": "nobody/no-such-model"}}, "model.name = 'nobody/no-such-model'"),
    ({"reward": {"weights": "/nonexistent/aesthetic.pth"}}, "reward.weights"),
    ({"reward": {"clip": "nobody/no-such-clip"}}, "reward.clip"),
    ({"model": {"dtype": "float16"}}, "model.dtype float16 needs a GPU"),
    ({"lora": {"target_modules": ["to_q", "nonexistent"]}},
     "lora.target_modules: 'nonexistent' names no module of the Stable Diffusion UNet"),
], ids=["model", "aesthetic-weights", "clip", "fp16-on-cpu", "lora-target-missing"])
def test_missing_weights_and_fp16_on_cpu_are_one_line_exit_2_nothing_written(comps, tmp_path, capsys, monkeypatch,
                                                                              over, field):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = stable_spec(comps, tmp_path / "spec.yaml", **over)
    before = sorted(os.listdir(tmp_path))
    assert main(["diffusion", "run", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and field in err, err
    if field.startswith(("model.name", "reward.clip")):
        assert "huggingface-cli download nobody/" in err
    assert sorted(os.listdir(tmp_path)) == before


def test_gradient_checkpointing_gives_the_same_lora_gradients(comps, tmp_path):
    """model.gradient_checkpointing recomputes the UNet's blocks in the backward pass: the same log-probabilities
    and LoRA gradients (float64, to 1e-9 relative), on a UNet that has it switched on."""
    grads, lps = [], []
    for on in (False, True):
        ctx, _, _, _ = built(comps, tmp_path, model={"dtype": "float64", "gradient_checkpointing": on})
        pol = ctx.policy
        unet = pol.model.base_model.model.unet
        assert unet.is_gradient_checkpointing == on
        q, qm = pol.encode([4, 7])
        torch.manual_seed(3)
        y = pol.generate(q, qm)
        for p in pol.model.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(p.numel()))
        lp = pol.seq_logprob(q, qm, y)
        lp.sum().backward()
        lps.append(lp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in pol.model.parameters() if p.requires_grad]))
    torch.testing.assert_close(lps[1], lps[0], rtol=1e-9, atol=0)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
