"""Algorithms: one class per method, on every policy back-end it declares (``tracks``).

THE registry: :data:`ALGORITHMS` (name → class). Adding a method is one file here and one line below
(plus its loss in :mod:`testbed.losses`); every spec, the CLI, the README's algorithm table
(``testbed list --markdown``) and the run folder learn about it from its declarations.
"""

from testbed.algorithms.base import ITEM_BYTES, Algorithm, Step, build_config, check_pairing
from testbed.algorithms.dpo import DPO, DPOConfig
from testbed.algorithms.grpo import GRPO, GRPOConfig
from testbed.algorithms.npg import NPG, NPGConfig
from testbed.algorithms.ppo import PPO, PPOConfig
from testbed.algorithms.preference import PREFERENCE_ALGORITHMS
from testbed.algorithms.rebel import REBEL, REBELConfig
from testbed.algorithms.rloo import RLOO, RLOOConfig
from testbed.algorithms.sft import SFT, SFTConfig
from testbed.algorithms.user import UserRule

ALGORITHMS: dict[str, type[Algorithm]] = {
    "rebel": REBEL,
    "npg": NPG,
    "ppo": PPO,
    "dpo": DPO,
    "rloo": RLOO,
    "grpo": GRPO,
    "sft": SFT,
    **PREFERENCE_ALGORITHMS,
    "user": UserRule,
}


def on_track(track: str) -> dict[str, type[Algorithm]]:
    """The algorithms that run on a policy back-end ("bandit", "lm" or "diffusion")."""
    return {n: c for n, c in ALGORITHMS.items() if track in c.tracks}


def algorithm_table() -> str:
    """The README's algorithm table, from the registry: one row per method, a column per policy back-end,
    the maturity and the named tests behind it (``testbed list --markdown``; tests/test_readme.py checks the
    README's copy)."""
    import sys

    lines = ["| algorithm | what it does | bandit | LM | images | maturity | tests |", "|---|---|---|---|---|---|---|"]
    for name, cls in ALGORITHMS.items():
        doc = cls.summary or (cls.__doc__ if "__doc__" in vars(cls) and cls.__doc__ else
                              sys.modules[cls.__module__].__doc__ or "").strip().splitlines()[0]
        tests = ", ".join(f"`{t}`" for t in cls.tests) or "—"
        lines.append(f"| `{name}` | {doc} | {'✓' if 'bandit' in cls.tracks else '—'} | "
                     f"{'✓' if 'lm' in cls.tracks else '—'} | {'✓' if 'diffusion' in cls.tracks else '—'} | "
                     f"{cls.maturity} | {tests} |")
    return "\n".join(lines) + "\n"


__all__ = ["ITEM_BYTES",
           "algorithm_table", "ALGORITHMS", "DPO", "DPOConfig", "GRPO", "GRPOConfig", "NPG", "NPGConfig", "PPO", "PPOConfig",
           "PREFERENCE_ALGORITHMS", "REBEL", "REBELConfig", "RLOO", "RLOOConfig", "SFT", "SFTConfig", "Algorithm",
           "Step", "build_config", "check_pairing", "on_track"]
