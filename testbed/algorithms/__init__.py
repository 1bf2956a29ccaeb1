"""Algorithms: one class per method, on every policy back-end it declares (``tracks``).

THE registry: :data:`ALGORITHMS` (name → class). Adding a method is one file here and one line below
(plus its loss in :mod:`testbed.losses`); every spec, the CLI, the README's algorithm table
(``testbed list --markdown``) and the run folder learn about it from its declarations.
"""

from testbed.algorithms.base import Algorithm, Step, build_config, check_pairing
from testbed.algorithms.dpo import DPO, DPOConfig
from testbed.algorithms.grpo import GRPO, GRPOConfig
from testbed.algorithms.npg import NPG, NPGConfig
from testbed.algorithms.ppo import PPO, PPOConfig
from testbed.algorithms.preference import PREFERENCE_ALGORITHMS
from testbed.algorithms.rebel import REBEL, REBELConfig
from testbed.algorithms.rloo import RLOO, RLOOConfig
from testbed.algorithms.sft import SFT, SFTConfig

ALGORITHMS: dict[str, type[Algorithm]] = {
    "rebel": REBEL,
    "npg": NPG,
    "ppo": PPO,
    "dpo": DPO,
    "rloo": RLOO,
    "grpo": GRPO,
    "sft": SFT,
    **PREFERENCE_ALGORITHMS,
}


def on_track(track: str) -> dict[str, type[Algorithm]]:
    """The algorithms that run on a policy back-end ("bandit" or "lm")."""
    return {n: c for n, c in ALGORITHMS.items() if track in c.tracks}


__all__ = ["ALGORITHMS", "DPO", "DPOConfig", "GRPO", "GRPOConfig", "NPG", "NPGConfig", "PPO", "PPOConfig",
           "PREFERENCE_ALGORITHMS", "REBEL", "REBELConfig", "RLOO", "RLOOConfig", "SFT", "SFTConfig", "Algorithm",
           "Step", "build_config", "check_pairing", "on_track"]
