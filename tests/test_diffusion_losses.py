"""DDPO's per-prompt baseline (testbed.losses.per_prompt_advantage) by hand, and the shipped image specs
validate (the quick study, the full study, the paper-scale spec)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.losses import per_prompt_advantage

ROOT = Path(__file__).resolve().parents[1]


def test_per_prompt_advantage_by_hand():
    r = torch.tensor([1.0, 3.0, 10.0, 2.0, 5.0], dtype=torch.float64)
    p = torch.tensor([0, 0, 1, 1, 2])
    a = per_prompt_advantage(r, p).numpy()
    # prompt 0: mean 2, population std 1; prompt 1: mean 6, std 4; prompt 2 alone: the batch's mean 4.2 and std
    batch_std = np.std([1, 3, 10, 2, 5])
    expect = [-1 / (1 + 1e-8), 1 / (1 + 1e-8), 4 / (4 + 1e-8), -4 / (4 + 1e-8), 0.8 / (batch_std + 1e-8)]
    np.testing.assert_allclose(a, expect, rtol=1e-12)
    np.testing.assert_allclose(per_prompt_advantage(r, p, scale=False).numpy(), [-1, 1, 4, -4, 0.8], rtol=1e-12)
    # rows of an embedding group like labels
    emb = torch.tensor([[0.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    np.testing.assert_allclose(per_prompt_advantage(r, emb).numpy(), a, rtol=1e-12)
    with pytest.raises(ValueError):
        per_prompt_advantage(r[None], p)


@pytest.mark.parametrize("name", ["digits_compress_quick", "digits_compress", "sd15_aesthetic"])
def test_shipped_image_specs_validate(name):
    pytest.importorskip("diffusers")
    from testbed.diffusion.spec import load_diffusion_spec

    spec = load_diffusion_spec(ROOT / "experiments" / "diffusion" / f"{name}.yaml")
    assert [n for n, _, _ in spec.algorithms] == ["rebel", "ppo", "dpo"] and len(spec.seeds) >= 3
    ppo = spec.algorithms[1][1]
    assert ppo.critic == "prompt"  # the diffusion default: DDPO's per-prompt baseline
    # the paper spec is DDPO's PPO (per-pixel mean log-probs, advantage clip 5, no KL); the CPU studies keep the
    # summed densities their committed tables were made with
    want = ("mean", 5.0, 0.0) if name == "sd15_aesthetic" else ("sum", 0.0, 0.0)
    assert (ppo.logprob, ppo.adv_clip, ppo.beta) == want
