"""A stack of preference problems of one shape: what the batched runner gives a preference algorithm.

:class:`PreferenceBatch` holds the members' arrays stacked along a leading axis (preferences [S, X, Y, Y],
rho [S, X], pi_ref [S, X, Y]); the exact quantities of :class:`PreferenceBandit` (win rates,
exploitability, KL to pi_ref) then run on the whole stack in one array computation and give member s
bit for bit its unstacked value. ``members[s]`` is problem s, for its own random draws.
"""

from __future__ import annotations

import numpy as np

from testbed.problems.bandit import ProblemBatch, per_member
from testbed.problems.preference import PreferenceBandit


@per_member("sample_contexts", "sample_preferences", "minimax_winner", "condorcet_winners", "arrays", "save")
class PreferenceBatch(PreferenceBandit):
    """S preference problems of one shape stacked along a leading axis (the members are validated already)."""

    def __init__(self, members: list[PreferenceBandit]):
        self.members = list(members)
        if any(type(m) is not type(self.members[0]) or m.preferences.shape != self.members[0].preferences.shape
               for m in self.members):
            raise ValueError("a problem batch needs problems of one kind and shape")
        for name in ("preferences", "rho", "pi_ref", "log_pi_ref"):
            setattr(self, name, np.stack([getattr(m, name) for m in self.members]))
        self.name = "+".join(dict.fromkeys(m.name for m in self.members))
        self._winner = None

    def __len__(self) -> int:
        return len(self.members)


def problem_batch(problems: list) -> ProblemBatch | PreferenceBatch:
    """The stacked view of S problems of one kind and shape: reward problems or preference problems."""
    return PreferenceBatch(problems) if isinstance(problems[0], PreferenceBandit) else ProblemBatch(problems)
