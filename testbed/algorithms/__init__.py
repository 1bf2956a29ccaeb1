"""Algorithms: update rules over the shared problems, policies and losses."""

from testbed.algorithms.base import Algorithm, Step, build_config, check_pairing
from testbed.algorithms.dpo import DPO, DPOConfig
from testbed.algorithms.npg import NPG, NPGConfig
from testbed.algorithms.ppo import PPO, PPOConfig
from testbed.algorithms.preference import PREFERENCE_ALGORITHMS
from testbed.algorithms.rebel import REBEL, REBELConfig

ALGORITHMS: dict[str, type[Algorithm]] = {"rebel": REBEL, "npg": NPG, "ppo": PPO, "dpo": DPO, **PREFERENCE_ALGORITHMS}

__all__ = ["ALGORITHMS", "DPO", "DPOConfig", "NPG", "NPGConfig", "PPO", "PPOConfig", "PREFERENCE_ALGORITHMS", "REBEL",
           "REBELConfig", "Algorithm", "Step", "build_config", "check_pairing"]
