"""GRPO's group-normalised advantage on RLOO's update (Shao et al. 2024, DeepSeekMath, §4.1.2).

A group is the k responses of one prompt; the advantage of response j is (r_j - mean(r)) / (std(r) + eps)
(:func:`testbed.losses.group_normalised_advantage`; TRL's GRPOTrainer: unbiased std, eps = 1e-4;
``scale: false`` only centres, as Dr. GRPO does). Everything else is RLOO's: KL in the sequence reward,
the clipped surrogate, the same solvers on both back-ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from testbed.algorithms.base import flag
from testbed.algorithms.rloo import RLOO, RLOOConfig
from testbed.losses import group_normalised_advantage


@dataclass
class GRPOConfig(RLOOConfig):
    scale: bool = flag(True, "divide by the group's standard deviation (false: centre only, as Dr. GRPO)")


class GRPO(RLOO):
    name = "grpo"
    Config = GRPOConfig
    summary = "RLOO's update with the group-normalised advantage (r - mean)/(std + 1e-4) (Shao et al. 2024)"
    maturity = "experimental"
    tests = ("test_group_normalised_advantage_by_hand", "test_rloo_and_grpo_advantages_on_a_bandit_batch")

    def advantage(self, r: torch.Tensor) -> torch.Tensor:
        return group_normalised_advantage(r, scale=self.config.scale)
