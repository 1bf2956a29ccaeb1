"""DDPO's per-prompt baseline (testbed.losses.per_prompt_advantage) by hand, its stat tracker across iterations
(testbed.losses.tracked_prompt_advantage) against a copy of DDPO's class, and the shipped image specs validate (the
quick study, the full study, the paper-scale spec)."""

from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from testbed.losses import per_prompt_advantage, prompt_key, tracked_prompt_advantage

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


class DDPOTracker:
    """kvablack/ddpo-pytorch, ddpo_pytorch/stat_tracking.py, PerPromptStatTracker.update, as it stands (numpy)."""

    def __init__(self, buffer_size, min_count):
        self.buffer_size, self.min_count, self.stats = buffer_size, min_count, {}

    def update(self, prompts, rewards):
        prompts = np.array(prompts)
        rewards = np.array(rewards)
        unique = np.unique(prompts)
        advantages = np.empty_like(rewards)
        for prompt in unique:
            prompt_rewards = rewards[prompts == prompt]
            if prompt not in self.stats:
                self.stats[prompt] = deque(maxlen=self.buffer_size)
            self.stats[prompt].extend(prompt_rewards)
            if len(self.stats[prompt]) < self.min_count:
                mean = np.mean(rewards)
                std = np.std(rewards) + 1e-6
            else:
                mean = np.mean(self.stats[prompt])
                std = np.std(self.stats[prompt]) + 1e-6
            advantages[prompts == prompt] = (prompt_rewards - mean) / std
        return advantages


# iterations of prompts: repeats, a prompt seen once (6), one that overflows the buffer of 5 (0: 3 + 4 + 2 + 3),
# one that reaches min_count 4 only at the third iteration (1), one that never does (2), one new late (7)
BATCHES = [[0, 0, 0, 1, 2, 6], [0, 0, 0, 0, 1, 3, 3], [1, 1, 0, 0, 3, 3, 2], [0, 0, 0, 1, 7, 3, 3]]


def _tracked(batches, rewards, buffer, min_count, embed=False, scale=True):
    stats, out = {}, []
    for b, r in zip(batches, rewards):
        p = torch.tensor(b)
        if embed:  # prompt rows: an embedding per label, as the Stable Diffusion back-end's
            p = torch.stack([torch.full((3, 4), 0.5 * c, dtype=torch.float32) for c in b])
        out.append(tracked_prompt_advantage(torch.as_tensor(r), p, stats, buffer, min_count, scale=scale).numpy())
    return out, stats


@pytest.mark.parametrize("embed", [False, True])
def test_tracked_prompt_advantage_is_ddpos_stat_tracker_across_iterations(embed):
    rng = np.random.default_rng(3)
    rewards = [rng.normal(2.0, 1.5, len(b)) for b in BATCHES]
    rewards[2][4] = rewards[2][5]  # a tie within prompt 3
    ref = DDPOTracker(5, 4)
    want = [ref.update(b, r) for b, r in zip(BATCHES, rewards)]
    got, stats = _tracked(BATCHES, rewards, 5, 4, embed)
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-12)
    # the cases occur: prompt 0's buffer overflowed (12 rewards, the last 5 kept), prompt 1 reached min_count at the
    # third iteration (1 + 1 + 2) and used its own statistics there, prompt 2 never did (the batch's)
    assert len(stats) == 6 and all(len(v) <= 5 for v in stats.values())
    key0 = prompt_key(torch.full((3, 4), 0.0) if embed else torch.tensor(0))
    np.testing.assert_array_equal(stats[key0], np.concatenate([r[np.array(b) == 0] for b, r in zip(BATCHES, rewards)])[-5:])
    b2, r2 = np.array(BATCHES[2]), rewards[2]
    own = np.concatenate([r[np.array(b) == 1] for b, r in zip(BATCHES[:3], rewards[:3])])
    np.testing.assert_allclose(got[2][b2 == 1], (r2[b2 == 1] - own.mean()) / (own.std() + 1e-6), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[2][b2 == 2], (r2[b2 == 2] - r2.mean()) / (r2.std() + 1e-6), rtol=0, atol=1e-12)
    # a prompt alone in its batch whose buffer is not full takes the batch's statistics (6 in the first batch)
    b0, r0 = np.array(BATCHES[0]), rewards[0]
    np.testing.assert_allclose(got[0][b0 == 6], (r0[b0 == 6] - r0.mean()) / (r0.std() + 1e-6), rtol=0, atol=1e-12)
    # the buffer matters: the within-batch statistics differ at the last iteration
    within = per_prompt_advantage(torch.as_tensor(rewards[3]), torch.tensor(BATCHES[3])).numpy()
    assert np.abs(within - want[3]).max() > 0.1


def test_tracked_prompt_advantage_unscaled_is_r_minus_the_trackers_mean():
    rng = np.random.default_rng(4)
    rewards = [rng.normal(0.0, 2.0, len(b)) for b in BATCHES]
    ref = DDPOTracker(5, 4)
    scaled, _ = _tracked(BATCHES, rewards, 5, 4)
    unscaled, _ = _tracked(BATCHES, rewards, 5, 4, scale=False)
    for b, r, s, u in zip(BATCHES, rewards, scaled, unscaled):
        ref.update(b, r)
        b = np.array(b)
        for c in np.unique(b):  # the same mean as the scaled advantage's, no division
            pool = np.array(ref.stats[c]) if len(ref.stats[c]) >= 4 else r
            np.testing.assert_allclose(u[b == c], r[b == c] - pool.mean(), rtol=0, atol=1e-12)
            np.testing.assert_allclose(s[b == c], u[b == c] / (pool.std() + 1e-6), rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        tracked_prompt_advantage(torch.zeros(3), torch.zeros(3), {}, 0, 1)


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
    want = ("mean", 5.0, 0.0, 32, 16) if name == "sd15_aesthetic" else ("sum", 0.0, 0.0, 0, 16)
    assert (ppo.logprob, ppo.adv_clip, ppo.beta, ppo.prompt_buffer, ppo.prompt_min_count) == want
