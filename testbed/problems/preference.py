"""Preference bandits: a preference tensor P[x, y, y'] = P(y ≻ y' | x), possibly intransitive.

A :class:`PreferenceBandit` holds P with P + Pᵀ = 1 (so ½ on the diagonal), a context
distribution rho and a reference policy pi_ref. Its exact tools (testbed/THEORY.md §E):

- :meth:`PreferenceBandit.minimax_winner`: the von Neumann / minimax winner per context, i.e. the
  symmetric Nash equilibrium of the zero-sum game with payoff P − ½ (Swamy et al. 2024, SPO;
  "maximal lottery"), by linear programming (``scipy.optimize.linprog``), then polished to
  machine precision on its support;
- :meth:`PreferenceBandit.exploitability`: expl(pi) = E_x[max_y P(y ≻ pi | x)] − ½ ≥ 0, zero exactly at
  the minimax winner (NashConv = 2·expl in OpenSpiel's terms);
- :func:`~testbed.problems.exact.bradley_terry_fit` (in :mod:`testbed.problems.exact`, with the LP
  and the regularised equilibrium): the Bradley–Terry maximum-likelihood reward of a preference tensor,
  i.e. what a reward model fitted to infinitely many comparisons would learn;
- :func:`regularised_minimax`: the Nash equilibrium pi*_tau of the KL-regularised game that
  Nash-MD converges to (Munos et al. 2023).

Generators: Bradley–Terry from a reward table (with a temperature), rock–paper–scissors, the
intransitive dice {2,4,9}, {1,6,8}, {3,5,7}, the NLHF ε-example from rater fractions, mixtures of
individually transitive raters (rankings) with an intransitive aggregate, and random
skew-symmetric instances.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
from scipy.special import expit

from testbed.errors import (
    InputError,
    check_distribution,
    check_finite,
    check_shape,
    choice,
    context_and_reference,
    nonneg_int,
    positive_int,
    positive_number,
)
from testbed.io import atomic_write
from testbed.problems.exact import bradley_terry_fit, kl_per_context, minimax_winner, regularised_minimax  # noqa: F401

ATOL = 1e-9  # the one tolerance of every preference-tensor check: entries within it of [0, 1] are clipped
# into it, and P + Pᵀ = 1, P(y ≻ y) = ½ hold to it (files written with float64 round-trip exactly)


def check_preferences(P: np.ndarray, name: str = "preferences") -> np.ndarray:
    """Validate a preference tensor P[x, y, y'] and return it as float64. One-line InputError on failure."""
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 3 or P.shape[1] != P.shape[2] or min(P.shape) < 1:
        raise InputError(f"{name} must be a 3-d array P[x, y, y'] of shape [X, Y, Y] (got shape {P.shape})")
    check_finite(name, P)
    out = np.maximum(P - 1.0, -P)  # how far each entry lies outside [0, 1]
    if np.any(out > ATOL):
        x, y, y2 = np.unravel_index(np.argmax(out), P.shape)
        raise InputError(f"{name} must be probabilities in [0, 1] (got P[{x}, {y}, {y2}] = {float(P[x, y, y2])!r})")
    P = np.clip(P, 0.0, 1.0)  # rounding (a mixture summing to 1 + 2e-16) is within ATOL: clipped
    diag = np.diagonal(P, axis1=1, axis2=2)
    if not np.allclose(diag, 0.5, rtol=0.0, atol=ATOL):
        bad = float(diag.ravel()[np.argmax(np.abs(diag.ravel() - 0.5))])
        raise InputError(f"{name} must have 1/2 on the diagonal, P(y ≻ y) = 1/2 (got {bad:.6g})")
    skew = P + np.swapaxes(P, 1, 2) - 1.0
    if not np.allclose(skew, 0.0, rtol=0.0, atol=ATOL):
        x, y, y2 = np.unravel_index(np.argmax(np.abs(skew)), skew.shape)
        raise InputError(f"{name} must satisfy P + Pᵀ = 1, P(y ≻ y') + P(y' ≻ y) = 1 (at x={x}, y={y}, y'={y2}: "
                         f"{P[x, y, y2]:.6g} + {P[x, y2, y]:.6g} = {P[x, y, y2] + P[x, y2, y]:.6g})")
    return P


class PreferenceBandit:
    """Contextual dueling bandit with a (possibly intransitive) preference tensor.

    Args:
      preferences: P[x, y, y'] = P(y ≻ y' | x), shape [X, Y, Y], P + Pᵀ = 1, values in [0, 1].
      rho: context distribution, shape [X] (default uniform).
      pi_ref: reference policy, shape [X, Y], strictly positive (default uniform).
      name: label used in results tables.
    """

    kind = "preference"

    def __init__(self, preferences, rho=None, pi_ref=None, name: str = "preference"):
        P = check_preferences(preferences)
        rho, pi_ref = context_and_reference(rho, pi_ref, *P.shape[:2])
        self.preferences, self.rho, self.pi_ref = P, rho, pi_ref
        self.log_pi_ref = np.log(pi_ref)
        self.name = str(name)
        self._winner: np.ndarray | None = None

    @property
    def num_contexts(self) -> int:
        return self.preferences.shape[-3]

    @property
    def num_actions(self) -> int:
        return self.preferences.shape[-1]

    # ----- sampling -------------------------------------------------------------------------
    def sample_contexts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.num_contexts, size=n, p=self.rho)

    def sample_preferences(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, y2: np.ndarray) -> np.ndarray:
        """One Bernoulli(P(y ≻ y' | x)) outcome per triple: 1.0 if y wins, else 0.0 (a preference oracle)."""
        return (rng.random(len(x)) < self.preferences[x, y, y2]).astype(np.float64)

    # ----- exact quantities (testbed/THEORY.md §E) ---------------------------------------------------
    # Each works over leading axes (a stack of problems and policies: one value per member) and sums only over
    # the last axis of a contiguous array, so member s of a stack gets bit for bit its unstacked value.
    def win_rates(self, pi: np.ndarray) -> np.ndarray:
        """P(y ≻ pi | x) = sum_y' P[x, y, y']·pi(y'|x), shape [X, Y] (r_t of self-play when pi = pi_t)."""
        return np.einsum("...xab,...xb->...xa", self.preferences, pi)

    def exploitability_per_context(self, pi: np.ndarray) -> np.ndarray:
        return self.win_rates(pi).max(axis=-1) - 0.5

    def expect(self, per_context: np.ndarray) -> float | np.ndarray:
        """E_{x~rho} of a per-context value [X] (a float; one per member of a stack)."""
        v = np.sum(self.rho * per_context, axis=-1)
        return float(v) if v.ndim == 0 else v

    def exploitability(self, pi: np.ndarray) -> float | np.ndarray:
        """expl(pi) = E_{x~rho}[max_y P(y ≻ pi | x)] − ½ (≥ 0; 0 iff pi is a minimax winner on supp rho)."""
        return self.expect(self.exploitability_per_context(pi))

    def minimax_winner(self) -> np.ndarray:
        """The minimax (von Neumann) winner per context, shape [X, Y] (cached)."""
        if self._winner is None:
            self._winner = np.stack([minimax_winner(Px) for Px in self.preferences])
        return self._winner.copy()

    def kl_ref(self, pi: np.ndarray, log_pi: np.ndarray | None = None) -> float | np.ndarray:
        """E_x KL(pi(.|x) || pi_ref(.|x))."""
        return self.expect(kl_per_context(pi, log_pi, self.log_pi_ref))

    def condorcet_winners(self) -> list[int | None]:
        """Per context: the action that beats every other with probability > ½, or None."""
        out = []
        for Px in self.preferences:
            beats = (Px > 0.5) | np.eye(len(Px), dtype=bool)
            wins = np.flatnonzero(beats.all(axis=1))
            out.append(int(wins[0]) if len(wins) else None)
        return out

    # ----- files ----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"preferences": self.preferences, "rho": self.rho, "pi_ref": self.pi_ref}

    def save(self, path: str | os.PathLike) -> None:
        """Write the instance as an .npz of named arrays (atomically); :func:`load_problem` reads it back."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, kind=np.str_(self.kind), name=np.str_(self.name), **self.arrays())
        atomic_write(path, write)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, X={self.num_contexts}, Y={self.num_actions})"


# ----- generators --------------------------------------------------------------------------------
def bradley_terry(rewards, temperature: float = 1.0) -> np.ndarray:
    """P(y ≻ y' | x) = σ((r(x,y) − r(x,y'))/temperature): a transitive instance. rewards [X, Y] or [Y]."""
    r = np.atleast_2d(np.asarray(rewards, dtype=np.float64))
    check_finite("rewards", r)
    t = positive_number("temperature", temperature)
    return expit((r[:, :, None] - r[:, None, :]) / t)


def rock_paper_scissors(strength: float = 1.0) -> np.ndarray:
    """Rock (0), paper (1), scissors (2): each beats the one before it, P(win) = (1 + strength)/2. Shape [1, 3, 3]."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise InputError(f"problem.strength must be in (0, 1] (got {strength!r})")
    A = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]])  # A[y, y'] = +1 if y beats y'
    return (0.5 + 0.5 * strength * A)[None]


DICE = ((2, 4, 9), (1, 6, 8), (3, 5, 7))


def dice_preferences(dice=DICE) -> np.ndarray:
    """P(die i ≻ die j) = P(roll_i > roll_j) + ½·P(roll_i = roll_j), from the faces (fair dice). Shape [1, K, K].

    For the default intransitive dice {2,4,9}, {1,6,8}, {3,5,7} each beats the next with probability
    5/9 and the last beats the first (testbed/THEORY.md §E).
    """
    faces = [np.asarray(d, dtype=np.float64) for d in dice]
    K = len(faces)
    P = np.empty((K, K))
    for i, j in itertools.product(range(K), repeat=2):
        a, b = faces[i][:, None], faces[j][None, :]
        P[i, j] = np.mean(a > b) + 0.5 * np.mean(a == b)
    return P[None]


def ranking_preferences(order, actions: int) -> np.ndarray:
    """One transitive rater: P[y, y'] = 1 if y is ranked above y' in ``order`` (best first), ½ on ties/diagonal."""
    rank = np.full(actions, np.inf)
    for pos, y in enumerate(order):
        rank[y] = pos
    P = np.where(rank[:, None] < rank[None, :], 1.0, np.where(rank[:, None] > rank[None, :], 0.0, 0.5))
    return P


def rater_mixture(rater_prefs, weights) -> np.ndarray:
    """Aggregate of rater types: P = sum_k w_k·P_k (a rater of type k drawn with probability w_k)."""
    Ps = np.asarray(rater_prefs, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    check_distribution("rater weights", w)
    return np.einsum("k,k...->...", w, Ps)


def nlhf_example(eps: float) -> np.ndarray:
    """Munos et al. (2023, NLHF) ε-example, from rater fractions. Shape [1, 3, 3].

    Three rater types: fraction f1 = 1/3 − ε prefers y2 ≻ y1, f2 = 1/3 + ε/2 prefers y1 ≻ y3,
    f3 = 1/3 + ε/2 prefers y3 ≻ y2; each is indifferent (½) on the other pairs. The minimax winner
    is (1/3 + ε/2, 1/3 + ε/2, 1/3 − ε) (testbed/THEORY.md §E); needs −2/3 < ε < 1/3.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not -2 / 3 < eps < 1 / 3:
        raise InputError(f"problem.eps must be in (-2/3, 1/3) so every rater fraction is positive (got {eps!r})")
    f = np.array([1 / 3 - eps, 1 / 3 + eps / 2, 1 / 3 + eps / 2])
    strict = [(1, 0), (0, 2), (2, 1)]  # (winner, loser) of each rater type (0-based y1, y2, y3)
    Ps = np.full((3, 3, 3), 0.5)
    for k, (a, b) in enumerate(strict):
        Ps[k, a, b], Ps[k, b, a] = 1.0, 0.0
    return rater_mixture(Ps, f)[None]


def cyclic_raters(actions: int = 3) -> np.ndarray:
    """Condorcet's paradox: ``actions`` transitive raters, rater k ranks k, k+1, …, k−1 (mod Y), equal weights.

    Each rater is a ranking (transitive); the aggregate has P(y ≻ y+1) = (Y−1)/Y for every y, a
    cycle, so there is no Condorcet winner; by symmetry uniform is a minimax winner (the unique
    one for Y = 3, where this is rock–paper–scissors with P(win) = 2/3). Shape [1, Y, Y].
    """
    Y = positive_int("problem.actions", actions)
    Ps = [ranking_preferences([(k + i) % Y for i in range(Y)], Y) for k in range(Y)]
    return rater_mixture(Ps, np.full(Y, 1.0 / Y))[None]


def random_raters(contexts: int, actions: int, raters: int, rng: np.random.Generator) -> np.ndarray:
    """Per context, ``raters`` random rankings with Dirichlet(1) weights; the aggregate may be intransitive."""
    out = np.empty((contexts, actions, actions))
    for x in range(contexts):
        Ps = [ranking_preferences(rng.permutation(actions), actions) for _ in range(raters)]
        out[x] = rater_mixture(Ps, rng.dirichlet(np.ones(raters)))
    return out


def random_skew(contexts: int, actions: int, rng: np.random.Generator) -> np.ndarray:
    """P(y ≻ y') ~ U[0, 1] independently for y < y', P(y' ≻ y) = 1 − P(y ≻ y'), ½ on the diagonal."""
    P = np.full((contexts, actions, actions), 0.5)
    iu = np.triu_indices(actions, 1)
    u = rng.uniform(0.0, 1.0, size=(contexts, len(iu[0])))
    P[:, iu[0], iu[1]] = u
    P[:, iu[1], iu[0]] = 1.0 - u
    return P


PREFERENCE_FAMILIES = ("rps", "dice", "nlhf", "cyclic_raters", "raters", "skew", "bt")


def make_preference(family: str = "rps", contexts: int = 1, actions: int = 3, seed: int = 0, eps: float = 0.1,
                    strength: float = 1.0, raters: int = 3, temperature: float = 1.0, pi_ref=None,
                    name: str | None = None) -> PreferenceBandit:
    """A preference instance of a named family; uniform rho; pi_ref uniform or one vector [Y] for every context.

    ``rps``, ``dice`` and ``nlhf`` are single-context games (``contexts`` repeats them);
    ``cyclic_raters`` is Condorcet's paradox on ``actions`` actions; ``raters`` mixes ``raters``
    random rankings per context; ``skew`` is random skew-symmetric; ``bt`` is Bradley–Terry from
    rewards U[0, 1] with ``temperature`` (transitive: a Condorcet winner exists).
    """
    choice("problem.family", family, PREFERENCE_FAMILIES)
    positive_int("problem.contexts", contexts)
    positive_int("problem.actions", actions)
    nonneg_int("problem.seed", seed)
    rng = np.random.default_rng(seed)
    fixed3 = {"rps": lambda: rock_paper_scissors(strength), "dice": dice_preferences, "nlhf": lambda: nlhf_example(eps)}
    if family in fixed3:
        if actions != 3:
            raise InputError(f"problem.actions must be 3 for family {family!r} (got {actions})")
        P = np.repeat(fixed3[family](), contexts, axis=0)
        tag = {"rps": f"rps{'' if strength == 1 else f'-s{strength:g}'}", "dice": "dice", "nlhf": f"nlhf-eps{eps:+g}"}[family]
    elif family == "cyclic_raters":
        P = np.repeat(cyclic_raters(actions), contexts, axis=0)
        tag = f"cyclic-raters-{actions}"
    elif family == "raters":
        P = random_raters(contexts, actions, positive_int("problem.raters", raters), rng)
        tag = f"raters{raters}-{contexts}x{actions}-s{seed}"
    elif family == "skew":
        P = random_skew(contexts, actions, rng)
        tag = f"skew-{contexts}x{actions}-s{seed}"
    else:
        positive_number("problem.temperature", temperature)
        P = bradley_terry(rng.uniform(0.0, 1.0, size=(contexts, actions)), temperature)
        tag = f"bt-{contexts}x{actions}-T{temperature:g}-s{seed}"
    ref = None
    if pi_ref is not None:
        try:
            v = np.asarray(pi_ref, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"problem.pi_ref must be a list of {actions} probabilities (got {pi_ref!r})") from None
        check_shape("problem.pi_ref", v, (actions,), "[Y]")
        ref = np.tile(v, (contexts, 1))
    return PreferenceBandit(P, pi_ref=ref, name=name or tag)
