"""Seeded generators of named instance families.

Families (rewards in [0, 1], so the bound of testbed/THEORY.md §B applies):
  - ``random``: r ~ U[0, 1] i.i.d.
  - ``needle``: one good action per context (r = 1), all others r = 0.
  - ``gap``: the best action has r = 1, the runner-up exactly 1 - gap, the rest U[0, 1 - gap].
Linear instances take features phi in [0, 1]^d and theta* on the simplex, so r = phi·theta* is in
[0, 1]; ``needle``/``gap`` put the family's reward in feature 0 with theta* = e_0 and fill the
other features with distractors. ``misspecification`` = eps mixes in an unrealisable part:
r = (1 - eps)·phi·theta* + eps·u, u ~ U[0, 1].
"""

from __future__ import annotations

import numpy as np

from testbed.errors import InputError, choice, nonneg_int, nonneg_number, positive_int
from testbed.problems.bandit import LinearBandit, TabularBandit

FAMILIES = ("random", "needle", "gap")


def _reward_table(rng: np.random.Generator, family: str, X: int, Y: int, gap: float) -> np.ndarray:
    if family == "random":
        return rng.uniform(0.0, 1.0, size=(X, Y))
    best = rng.integers(Y, size=X)
    rows = np.arange(X)
    if family == "needle":
        r = np.zeros((X, Y))
    else:  # gap
        if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not 0 < gap <= 1:
            raise InputError(f"problem.gap must be in (0, 1] (got {gap!r})")
        r = rng.uniform(0.0, 1.0 - gap, size=(X, Y))
        if Y > 1:
            second = (best + 1 + rng.integers(Y - 1, size=X)) % Y
            r[rows, second] = 1.0 - gap
    r[rows, best] = 1.0
    return r


def _check(family, contexts, actions, noise_std, seed):
    choice("problem.family", family, FAMILIES)
    nonneg_int("problem.seed", seed)
    positive_int("problem.contexts", contexts)
    positive_int("problem.actions", actions)
    nonneg_number("problem.noise_std", noise_std)


def make_tabular(family: str = "random", contexts: int = 20, actions: int = 10, seed: int = 0,
                 gap: float = 0.1, noise_std: float = 0.0, name: str | None = None) -> TabularBandit:
    """A tabular instance of a named family; uniform rho and pi_ref."""
    _check(family, contexts, actions, noise_std, seed)
    rng = np.random.default_rng(seed)
    r = _reward_table(rng, family, contexts, actions, gap)
    return TabularBandit(r, noise_std=noise_std,
                         name=name or f"tabular-{family}-{contexts}x{actions}-s{seed}")


def make_linear(family: str = "random", contexts: int = 20, actions: int = 10, dim: int = 4,
                seed: int = 0, gap: float = 0.1, misspecification: float = 0.0,
                noise_std: float = 0.0, name: str | None = None) -> LinearBandit:
    """A linear instance of a named family; uniform rho and pi_ref (theta = 0)."""
    _check(family, contexts, actions, noise_std, seed)
    positive_int("problem.dim", dim)
    eps = nonneg_number("problem.misspecification", misspecification)
    if eps > 1:
        raise InputError(f"problem.misspecification must be in [0, 1] (got {eps!r})")
    rng = np.random.default_rng(seed)
    phi = rng.uniform(0.0, 1.0, size=(contexts, actions, dim))
    if family == "random":
        theta = rng.dirichlet(np.ones(dim))
    else:
        phi[:, :, 0] = _reward_table(rng, family, contexts, actions, gap)
        theta = np.zeros(dim)
        theta[0] = 1.0
    r = phi @ theta
    if eps > 0:
        r = (1.0 - eps) * r + eps * rng.uniform(0.0, 1.0, size=r.shape)
    return LinearBandit(phi, theta, r, noise_std=noise_std,
                        name=name or f"linear-{family}-{contexts}x{actions}x{dim}-s{seed}")
