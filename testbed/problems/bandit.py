"""Contextual bandits with exact ground truth: the tabular and the linear problem.

A problem is a reward table r[x, y], a context distribution rho[x] and a reference policy
pi_ref[x, y]. Everything the theory talks about (J(pi), J*, the optimal policy, the
KL-regularised optimum pi*_beta) is computed exactly from these arrays, so every run on a
bandit can be scored without estimation error (testbed/THEORY.md §A).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.special import log_softmax, logsumexp

from testbed.errors import InputError, check_finite, check_shape, context_and_reference, nonneg_number
from testbed.io import atomic_write
from testbed.problems.exact import kl_per_context
from testbed.problems.preference import PreferenceBandit


def scaled_rewards(rewards: np.ndarray, beta: float) -> np.ndarray:
    """(r − max_y r)/beta: the exponent of pi*_beta ∝ pi_ref·exp(r/beta) up to a per-context constant. It is <= 0
    and exactly 0 at the best responses, so a tiny beta neither overflows (r/beta at beta ~ 1e-310 did: NaN) nor
    absorbs ln pi_ref there: pi*_beta → pi_ref restricted to the best responses, also at beta = 0."""
    shifted = rewards - rewards.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.where(shifted == 0, 0.0, shifted / beta)  # beta may have underflowed to 0 (DPO's beta·s)


def regularised_gap(pi: np.ndarray, log_pi: np.ndarray | None, rewards: np.ndarray, log_pi_ref: np.ndarray,
                    c: float, log_target: np.ndarray) -> np.ndarray:
    """c·KL(pi‖target) per context (the last axis: responses), the regularised gap J_c(pi*_c) − J_c(pi) when the
    target is pi*_c. Where that product is not finite — pi*_c has underflowed to 0 on responses pi has (c ~ 1e-310)
    — it is the same gap written without the overflowing term: E_pi[max r − r] + c·(KL(pi‖pi_ref) + ln Z_c),
    Z_c = sum_y pi_ref·exp((r − max r)/c) (finite: >= pi_ref of the best responses). Targets with no −inf entry
    (IPO's) never take that branch."""
    with np.errstate(invalid="ignore", over="ignore"):  # 0·inf at c = 0: taken by the other branch
        gap = c * kl_per_context(pi, log_pi, log_target)
    bad = ~np.isfinite(gap) & np.any(np.isneginf(log_target), axis=-1)
    if np.any(bad):
        regret = np.sum(pi * (rewards.max(axis=-1, keepdims=True) - rewards), axis=-1)
        log_z = logsumexp(log_pi_ref + scaled_rewards(rewards, c), axis=-1)
        with np.errstate(invalid="ignore"):
            alt = regret + c * (kl_per_context(pi, log_pi, log_pi_ref) + log_z)
        gap = np.where(bad, alt, gap)
    return gap


class TabularBandit:
    """Tabular contextual bandit.

    Args:
      rewards: r[x, y], shape [X, Y], finite.
      rho: context distribution, shape [X].
      pi_ref: reference policy, shape [X, Y], rows sum to 1, strictly positive (full support).
      noise_std: standard deviation of Gaussian noise added to *sampled* rewards
        (the exact helpers use the mean reward table).
      name: label used in results tables.
    """

    kind = "tabular"

    def __init__(self, rewards, rho=None, pi_ref=None, noise_std: float = 0.0, name: str = "tabular"):
        r = np.asarray(rewards, dtype=np.float64)
        if r.ndim != 2 or min(r.shape) < 1:
            raise InputError(f"rewards must be a 2-d array r[x, y] of shape [X, Y] (got shape {r.shape})")
        check_finite("rewards", r)
        rho, pi_ref = context_and_reference(rho, pi_ref, *r.shape)
        self.rewards, self.rho, self.pi_ref = r, rho, pi_ref
        self.log_pi_ref = np.log(pi_ref)
        self.noise_std = nonneg_number("noise_std", noise_std)
        self.name = str(name)

    @property
    def num_contexts(self) -> int:
        return self.rewards.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.rewards.shape[-1]

    # ----- sampling -------------------------------------------------------------------------
    def sample_contexts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """x ~ rho, n times: the draws of ``rng.choice(X, size=n, p=rho)`` (its inverse CDF: one uniform
        each, searched in cumsum(rho) / total), without its argument checks, which cost ~10x the draw
        (tests/test_perf_paths.py checks equality with rng.choice)."""
        cdf = self.rho.cumsum()
        cdf /= cdf[-1]
        return cdf.searchsorted(rng.random(n), side="right")

    def sample_rewards(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r = self.rewards[x, y]
        if self.noise_std > 0:
            r = r + self.noise_std * rng.standard_normal(r.shape)
        return r

    # ----- exact quantities (testbed/THEORY.md §A) ---------------------------------------------------
    def value(self, pi: np.ndarray) -> float:
        """J(pi) = E_x E_{y~pi} r(x, y)."""
        return float(self.rho @ np.sum(pi * self.rewards, axis=1))

    def optimal_value(self) -> float:
        """J* = E_x max_y r(x, y)."""
        return float(self.rho @ self.rewards.max(axis=1))

    def optimal_policy(self) -> np.ndarray:
        """The argmax policy; ties share the mass equally."""
        best = self.rewards == self.rewards.max(axis=1, keepdims=True)
        return best / best.sum(axis=1, keepdims=True)

    def regularised_optimum_log(self, beta: float) -> np.ndarray:
        """ln pi*_beta with pi*_beta(y|x) ∝ pi_ref(y|x)·exp(r(x,y)/beta) (Rafailov et al. 2023), computed as
        log_softmax(ln pi_ref + (r − max_y r)/beta) (:func:`scaled_rewards`)."""
        return log_softmax(self.log_pi_ref + scaled_rewards(self.rewards, beta), axis=-1)

    def regularised_optimum(self, beta: float) -> np.ndarray:
        return np.exp(self.regularised_optimum_log(beta))

    def kl_ref(self, pi: np.ndarray, log_pi: np.ndarray | None = None) -> float:
        """E_x KL(pi(.|x) || pi_ref(.|x))."""
        return self._kl(pi, log_pi, self.log_pi_ref)

    def regularised_value(self, pi: np.ndarray, beta: float, log_pi: np.ndarray | None = None) -> float:
        """J_beta(pi) = J(pi) - beta * E_x KL(pi || pi_ref)."""
        return self.value(pi) - beta * self.kl_ref(pi, log_pi)

    def kl_reg_gap(self, pi: np.ndarray, beta: float, log_pi: np.ndarray | None = None) -> float:
        """J_beta(pi*_beta) - J_beta(pi), which equals beta * E_x KL(pi || pi*_beta) (derived;
        :func:`regularised_gap`)."""
        return float(self.rho @ regularised_gap(pi, log_pi, self.rewards, self.log_pi_ref, beta,
                                                self.regularised_optimum_log(beta)))

    def _kl(self, pi, log_pi, log_q) -> float:
        return float(self.rho @ kl_per_context(pi, log_pi, log_q))

    # ----- files ----------------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        return {"rewards": self.rewards, "rho": self.rho, "pi_ref": self.pi_ref,
                "noise_std": np.float64(self.noise_std)}

    def save(self, path: str | os.PathLike) -> None:
        """Write the instance as an .npz of named arrays (atomically)."""
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, kind=np.str_(self.kind), name=np.str_(self.name), **self.arrays())
        atomic_write(path, write)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, X={self.num_contexts}, Y={self.num_actions})"


class LinearBandit(TabularBandit):
    """Linear contextual bandit: features phi[x, y, :] in R^d and r = phi·theta* (+ misspecification).

    Args:
      features: phi, shape [X, Y, d].
      theta_star: shape [d]; rewards default to phi @ theta_star.
      rewards: optional explicit reward table [X, Y] (e.g. a misspecified one); if given together
        with theta_star, the rewards win and theta_star is kept for reference.
      Other arguments as for :class:`TabularBandit`.
    """

    kind = "linear"

    def __init__(self, features, theta_star=None, rewards=None, rho=None, pi_ref=None,
                 noise_std: float = 0.0, name: str = "linear"):
        phi = np.asarray(features, dtype=np.float64)
        if phi.ndim != 3 or min(phi.shape) < 1:
            raise InputError(f"features must be a 3-d array phi[x, y, d] of shape [X, Y, d] (got shape {phi.shape})")
        check_finite("features", phi)
        if theta_star is not None:
            theta_star = np.asarray(theta_star, dtype=np.float64)
            check_shape("theta_star", theta_star, (phi.shape[2],), "[d]")
            check_finite("theta_star", theta_star)
        if rewards is None:
            if theta_star is None:
                raise InputError("a linear bandit needs theta_star (shape [d]) or rewards (shape [X, Y])")
            rewards = phi @ theta_star
        rewards = np.asarray(rewards, dtype=np.float64)
        check_shape("rewards", rewards, phi.shape[:2], "[X, Y]")
        super().__init__(rewards, rho, pi_ref, noise_std, name)
        self.features, self.theta_star = phi, theta_star

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def misspecification(self) -> float:
        """max |r - phi·theta*| (0 for a realisable instance, nan without theta*)."""
        if self.theta_star is None:
            return float("nan")
        return float(np.max(np.abs(self.rewards - self.features @ self.theta_star)))

    def arrays(self) -> dict[str, np.ndarray]:
        out = super().arrays() | {"features": self.features}
        if self.theta_star is not None:
            out["theta_star"] = self.theta_star
        return out


def per_member(*names: str):
    """Class decorator for a stack of problems: the inherited per-problem methods ``names`` (draws, scalar
    values, files), which would read the stacked arrays as one problem's, refuse in one line instead."""
    def decorate(cls):
        for name in names:
            def refuse(self, *args, _name=name, **kwargs):
                raise TypeError(f"{type(self).__name__}.{_name}() is per problem, not for a stack: call it on "
                                f".members[s]")
            setattr(cls, name, refuse)
        return cls
    return decorate


@per_member("sample_contexts", "sample_rewards", "value", "optimal_value", "optimal_policy", "kl_ref",
            "regularised_value", "kl_reg_gap", "arrays", "save")
class ProblemBatch(TabularBandit):
    """S reward problems of one shape stacked along a leading axis: rewards [S, X, Y], rho [S, X],
    pi_ref [S, X, Y], noise_std [S] (and features [S, X, Y, d] when all are linear).

    What the batched runner gives an algorithm, so that exact updates and metrics of S seeds (or S
    instances) run as one array computation; the exact methods work over the last axes and return
    one value per member. ``members[s]`` is problem s, for per-seed random draws.
    """

    def __init__(self, members: list[TabularBandit]):
        self.members = list(members)
        first = self.members[0]
        for m in self.members:
            if type(m) is not type(first) or m.rewards.shape != first.rewards.shape or \
                    getattr(m, "features", np.empty(0)).shape != getattr(first, "features", np.empty(0)).shape:
                raise ValueError("a problem batch needs problems of one kind and shape")
        self.rewards = np.stack([m.rewards for m in self.members])
        self.rho = np.stack([m.rho for m in self.members])
        self.pi_ref = np.stack([m.pi_ref for m in self.members])
        self.log_pi_ref = np.stack([m.log_pi_ref for m in self.members])
        self.noise_std = np.array([m.noise_std for m in self.members])
        if isinstance(first, LinearBandit):
            self.features = np.stack([m.features for m in self.members])
        self.name = "+".join(dict.fromkeys(m.name for m in self.members))

    def __len__(self) -> int:
        return len(self.members)


def load_problem(path: str | os.PathLike) -> TabularBandit | PreferenceBandit:
    """Load an instance from an .npz of named arrays.

    Required: ``rewards`` [X, Y] (or ``features`` [X, Y, d] with ``theta_star`` [d], or
    ``preferences`` [X, Y, Y]). Optional: ``rho`` [X], ``pi_ref`` [X, Y], ``noise_std`` (scalar), ``name``.
    The presence of ``features`` makes it a :class:`LinearBandit`; of ``preferences``, a
    :class:`~testbed.problems.preference.PreferenceBandit` (P + Pᵀ = 1 checked).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"instance file {str(path)!r} is a folder, not an .npz file")
    if not path.is_file():
        raise InputError(f"instance file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise InputError(f"instance file {str(path)!r} is not an .npz archive (expected a zip of named arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {}
            for k in z.files:
                try:
                    data[k] = z[k]
                except ValueError as e:
                    if "allow_pickle" not in str(e):
                        raise
                    raise InputError(f"instance file {str(path)!r}: array {k!r} holds Python objects (dtype object); "
                                     "expected numbers") from None
    except InputError:
        raise
    except Exception as e:  # corrupt / not an npz
        raise InputError(f"instance file {str(path)!r} is not a readable .npz archive ({e})") from None
    known = {"kind", "name", "rewards", "rho", "pi_ref", "noise_std", "features", "theta_star", "preferences"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"instance file {str(path)!r}: unknown array(s) {unknown}; expected names {sorted(known)}")
    name = str(data.pop("name", path.stem))
    data.pop("kind", None)
    for k, v in data.items():
        if not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise InputError(f"instance file {str(path)!r}: array {k!r} must be numeric (got dtype {v.dtype})")
        if np.iscomplexobj(v):  # numpy would drop the imaginary part with only a warning
            raise InputError(f"instance file {str(path)!r}: array {k!r} must be real (got dtype {v.dtype})")
    noise = data.pop("noise_std", np.float64(0.0))
    if noise.shape != ():
        raise InputError(f"instance file {str(path)!r}: 'noise_std' must be a scalar (got shape {noise.shape})")
    noise = float(noise)
    try:
        if "preferences" in data:
            extra = sorted(set(data) & {"rewards", "features", "theta_star"})
            if extra or noise != 0.0:
                raise InputError(f"array 'preferences' makes a preference instance; it takes no {extra or ['noise_std']}")
            return PreferenceBandit(data["preferences"], data.get("rho"), data.get("pi_ref"), name)
        if "features" in data:
            return LinearBandit(data.pop("features"), data.pop("theta_star", None), data.pop("rewards", None),
                                data.get("rho"), data.get("pi_ref"), noise, name)
        if "rewards" not in data:
            raise InputError("missing array 'rewards' (shape [X, Y]) or 'features' (shape [X, Y, d])")
        if "theta_star" in data:
            raise InputError("array 'theta_star' given without 'features' (shape [X, Y, d])")
        return TabularBandit(data["rewards"], data.get("rho"), data.get("pi_ref"), noise, name)
    except InputError as e:
        raise InputError(f"instance file {str(path)!r}: {e}") from None
