"""Preference data on bandits: the labelling oracle, and (prompt, chosen, rejected) datasets.

Datasets follow the ecosystem's convention (TRL): a row is a prompt (context index), a chosen and a
rejected response (action indices). They are saved as ``.npz`` (arrays ``prompt``, ``chosen``,
``rejected``) or JSONL (one ``{"prompt": 3, "chosen": 1, "rejected": 4}`` per line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from testbed.errors import InputError
from testbed.io import atomic_write, atomic_write_text, read_jsonl
from testbed.policies import TabularSoftmax, sample_rows
from testbed.problems import TabularBandit
from testbed.problems.preference import check_preferences

LABELS = ("bt", "deterministic", "tensor", "preference")
PAIR_LAWS = ("distinct", "independent")
COLUMNS = ("prompt", "chosen", "rejected")


class PreferenceOracle:
    """p*(y ≻ y' | x): Bradley–Terry on the true reward with a temperature, deterministic (the better
    response always wins, ties at ½), a given tensor P[x, y, y'] (P + Pᵀ = 1), or ``preference``: the
    preference problem's own P."""

    def __init__(self, problem: TabularBandit, labels: str = "bt", temperature: float = 1.0,
                 preferences: np.ndarray | None = None):
        self.problem, self.labels, self.temperature = problem, labels, temperature
        if labels == "preference":
            if getattr(problem, "kind", "") != "preference":
                raise InputError(f"labels: preference needs a preference problem (got {problem.name!r})")
            self.P = problem.preferences
        elif labels == "tensor":
            X, Y = problem.rewards.shape
            P = np.asarray(preferences, dtype=np.float64)
            if P.shape != (X, Y, Y):
                raise InputError(f"preferences must have shape [X, Y, Y] = {(X, Y, Y)} (got {P.shape})")
            self.P = check_preferences(P, "preferences")  # the preference problems' check and tolerance
        else:
            r = problem.rewards
            diff = r[:, :, None] - r[:, None, :]
            self.P = expit(diff / temperature) if labels == "bt" else (diff > 0) + 0.5 * (diff == 0)

    def prob(self, x: np.ndarray, y: np.ndarray, y2: np.ndarray) -> np.ndarray:
        return self.P[x, y, y2]

    def label(self, rng: np.random.Generator, x, y, y2) -> tuple[np.ndarray, np.ndarray]:
        """(chosen, rejected): y wins with probability p*(y ≻ y' | x)."""
        win = rng.random(len(x)) < self.prob(x, y, y2)
        return np.where(win, y, y2), np.where(win, y2, y)


def load_preferences(path: str) -> np.ndarray:
    """The array ``preferences`` [X, Y, Y] of an .npz file (``labels: tensor``)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "preferences" not in z.files:
                raise InputError(f"preferences file {path!r}: missing array 'preferences' [X, Y, Y]")
            return z["preferences"]
    except (OSError, ValueError) as e:
        raise InputError(f"preferences file {path!r} is not a readable .npz ({e})") from None


def sample_distinct(rng: np.random.Generator, probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """y' ~ probs(.|x) conditioned on y' != y (uniform over the others if probs puts all mass on y)."""
    q = probs.copy()
    q[np.arange(len(y)), y] = 0.0
    empty = q.sum(axis=1) <= 0
    q[empty] = 1.0
    q[empty, y[empty]] = 0.0
    return sample_rows(rng, q)


def distinct_pair_probs(mu: np.ndarray) -> np.ndarray:
    """P(y, y' | x) [X, Y, Y] of the pairs the samplers draw: y ~ mu(.|x), then y' ~ mu(.|x)
    conditioned on y' != y (uniform over the others where mu puts all mass on y), as
    :func:`sample_distinct` does; zero on the diagonal, each context's table sums to 1."""
    mu = np.asarray(mu, dtype=np.float64)
    off = 1.0 - np.eye(mu.shape[-1])
    q = mu[:, None, :] * off
    empty = q.sum(axis=-1, keepdims=True) <= 0
    q = np.where(empty, off, q)
    return mu[:, :, None] * q / q.sum(axis=-1, keepdims=True)


def pair_probs(mu: np.ndarray, law: str = "distinct") -> np.ndarray:
    """P(y, y' | x) [X, Y, Y] of a pair law: ``distinct`` (:func:`distinct_pair_probs`) or ``independent``
    (mu(y|x)·mu(y'|x), ties y = y' included: they carry no preference)."""
    mu = np.asarray(mu, dtype=np.float64)
    return distinct_pair_probs(mu) if law == "distinct" else mu[:, :, None] * mu[:, None, :]


def sample_pairs(rng: np.random.Generator, mu: np.ndarray, x: np.ndarray, law: str = "distinct") -> tuple:
    """(y, y') for contexts x: y ~ mu(.|x), then y' ~ mu(.|x) given y' != y (``distinct``), or y, y' drawn
    independently from the tabular policy with probabilities mu (``independent``, ties allowed)."""
    if law == "independent":
        mu_policy = TabularSoftmax(np.log(mu))
        return mu_policy.sample(rng, x), mu_policy.sample(rng, x)
    y = sample_rows(rng, mu[x])
    return y, sample_distinct(rng, mu[x], y)


@dataclass
class PreferenceDataset:
    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    def __len__(self) -> int:
        return len(self.prompt)

    @classmethod
    def generate(cls, rng: np.random.Generator, problem: TabularBandit, mu: np.ndarray, n: int,
                 oracle: PreferenceOracle, law: str = "distinct") -> PreferenceDataset:
        """n pairs: x ~ rho, (y, y') ~ the pair law of mu (:func:`sample_pairs`), labelled by the oracle."""
        x = problem.sample_contexts(rng, n)
        y, y2 = sample_pairs(rng, mu, x, law)
        chosen, rejected = oracle.label(rng, x, y, y2)
        return cls(x, chosen, rejected)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == ".jsonl":
            atomic_write_text(path, "".join(json.dumps({"prompt": int(a), "chosen": int(b), "rejected": int(c)}) + "\n"
                                            for a, b, c in zip(self.prompt, self.chosen, self.rejected)))
        else:
            def write(tmp: Path) -> None:
                with open(tmp, "wb") as f:
                    np.savez(f, prompt=self.prompt, chosen=self.chosen, rejected=self.rejected)
            atomic_write(path, write)

    @classmethod
    def load(cls, path: str | Path, num_contexts: int, num_actions: int) -> PreferenceDataset:
        """Read and validate a dataset (.npz or .jsonl) for a problem with the given sizes."""
        path = Path(path)
        where = f"dataset {str(path)!r}"
        if not path.is_file():
            raise InputError(f"{where} does not exist")
        if path.suffix == ".jsonl":
            rows = read_jsonl(path, COLUMNS, int)
            arrays = {k: np.array([r[k] for r in rows], dtype=np.int64) for k in COLUMNS}
        else:
            try:
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except Exception:
                raise InputError(f"{where} is not a readable .npz or .jsonl file") from None
            missing = sorted({"prompt", "chosen", "rejected"} - set(arrays))
            if missing:
                raise InputError(f"{where}: missing array(s) {missing}; expected prompt, chosen, rejected")
            for k in ("prompt", "chosen", "rejected"):
                if arrays[k].ndim != 1 or not np.issubdtype(arrays[k].dtype, np.integer):
                    raise InputError(f"{where}: {k} must be a 1-d integer array (got {arrays[k].dtype}, shape {arrays[k].shape})")
        n = {len(arrays[k]) for k in ("prompt", "chosen", "rejected")}
        if len(n) != 1:
            raise InputError(f"{where}: prompt, chosen and rejected must have one length (got {sorted(n)})")
        if n == {0}:
            raise InputError(f"{where} is empty; it needs at least one (prompt, chosen, rejected) row")
        for k, hi in (("prompt", num_contexts), ("chosen", num_actions), ("rejected", num_actions)):
            a = arrays[k]
            if a.min() < 0 or a.max() >= hi:
                raise InputError(f"{where}: {k} indices must be in [0, {hi}) (got range [{a.min()}, {a.max()}])")
        same = np.flatnonzero(arrays["chosen"] == arrays["rejected"])
        if len(same):
            raise InputError(f"{where}: row {same[0]} has chosen == rejected; every pair needs two different responses")
        return cls(arrays["prompt"].astype(np.int64), arrays["chosen"].astype(np.int64), arrays["rejected"].astype(np.int64))
